"""`ftlab eval` on a run: the base once, every checkpoint with adapters swapped, results next to each."""

import json

from conftest import tiny_config
from ftlab.cli import main
from ftlab.results.index import study_of
from ftlab.train import train


def test_eval_every_checkpoint_of_a_run(pairs, tmp_path, capsys):
    run = train(tiny_config(pairs, tmp_path / "run", "method.name=lora", "method.rank=2", "train.checkpoints=[1]",
                            "model.tiny.max_position=512"))  # the source tasks need long contexts
    tasks = "builtin-forgetting,math_loss"
    assert main(["eval", str(run), "--tasks", tasks, "--limit", "6", "--batch-size", "4"]) == 0
    written = [run / "base_eval", run / "checkpoints" / "epochs-1", run / "final"]
    for directory in written:
        results = json.loads((directory / "eval.json").read_text())
        tasks_seen = {s["task"] for s in results["scores"]}
        assert tasks_seen == {"source_continuation", "source_question", "source_cloze", "source_loss", "math_loss"}
        assert all(s["n"] > 0 and s["version"] == "1" for s in results["scores"])
        assert "forgetting" not in results  # a number across tasks and models: the store reader's
    study = study_of(run)  # the run indexed into a store, as `ftlab report RUN` does
    (base,) = study.bases
    final = next(r for r in study.rows if r.checkpoint == "final")
    assert final.source_tasks == ["source_cloze", "source_continuation", "source_question"]
    scores = json.loads((run / "final" / "eval.json").read_text())["scores"]
    headline = {"source_cloze": "acc", "source_continuation": "acc_norm", "source_question": "acc_norm"}
    source = sum(s["value"] for s in scores if headline.get(s["task"]) == s["metric"]) / 3
    assert abs(final.source - source) < 1e-12 and abs(final.forgetting - (base.source - source)) < 1e-12
    # a second call finds every result recorded and runs nothing again
    capsys.readouterr()
    assert main(["eval", str(run), "--tasks", tasks, "--limit", "6"]) == 0
    assert "source_cloze acc" not in capsys.readouterr().out


def test_eval_unknown_task_exits_2(pairs, tmp_path, capsys):
    run = train(tiny_config(pairs, tmp_path / "run", "method.name=full", "train.epochs=1"))
    assert main(["eval", str(run), "--tasks", "hellaswg"]) == 2
    assert "did you mean 'hellaswag'" in capsys.readouterr().err

"""What a run is checked for before its directory is written, so that a run refused for its model or data leaves no
--out behind and the fixed config can use the same --out.

    preflight_run(cfg)                  # the hub when offline, architectures.preflight, weight files, first records
    preflight_run(cfg, weights=False)   # ftlab plan: a model directory holding only config.json is enough

Cheap by design: the model's config.json and the headers of its safetensors files (not the tensors), and the first
PREFLIGHT_RECORDS records of each data file. Everything is checked again, completely, as training reads it.
With HF_HUB_OFFLINE set, a hub model not in the local cache and a hub dataset (read streaming, which needs the
network) are refused at once, with one message saying how to provide them locally, instead of failing on retries.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from ftlab.architectures import preflight
from ftlab.builtin import BUILTIN_PREFIX, builtin_model_dir
from ftlab.config import HUB_PREFIX, DataConfig, ModelConfig, RunConfig
from ftlab.data import detect_format, prompt_response, read_records
from ftlab.errors import ConfigError, DataError
from ftlab.model import require_bitsandbytes
from ftlab.packing import document_text
from ftlab.weights import check_headers

PREFLIGHT_RECORDS = 8  # records of each data file read before the run directory is written


def preflight_run(cfg: RunConfig, sharded: bool = False, weights: bool = True) -> None:
    """Refuse, with an FtlabError naming the key, file or line: a hub model or dataset that cannot be read offline,
    what the model's architecture cannot do with cfg (architectures.preflight), a local model without readable
    safetensors weights (weights=True), and data whose first records are not of the shape the run reads (built-in
    data is ftlab's own; hub data is not read before training)."""
    check_offline(cfg.model, {"data.path": cfg.data.path, "data.eval_path": cfg.data.eval_path})
    preflight(cfg, sharded)
    if cfg.method.name == "qlora":
        require_bitsandbytes()
    name = cfg.model.name
    model_dir = builtin_model_dir(name) if name.startswith(BUILTIN_PREFIX) else Path(name)
    if weights and name != "tiny" and model_dir.is_dir():
        check_headers(model_dir)
    for path in (cfg.data.path, cfg.data.eval_path):
        if path and not path.startswith((BUILTIN_PREFIX, HUB_PREFIX)):
            for source, line, record in itertools.islice(read_records(path, cfg.data), PREFLIGHT_RECORDS):
                check_record(record, cfg.data, f"{source}:{line}")


def check_record(record: dict, data: DataConfig, where: str) -> None:
    """One data record has the shape its regime reads (data.regime, data.format), or a DataError names it."""
    if data.regime == "cpt":
        document_text(record, data.text_field, where)
        return
    fmt = detect_format(record, where, data.text_field) if data.format == "auto" else data.format
    if fmt != "messages":
        prompt_response(record, fmt, where)  # a raw-text record is refused here: IFT needs prompt/response pairs


def offline() -> bool:
    """HF_HUB_OFFLINE is set (as huggingface_hub reads it): nothing is fetched from the hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def is_hub_model(model: ModelConfig) -> bool:
    return model.name != "tiny" and not model.name.startswith(BUILTIN_PREFIX) and not Path(model.name).exists()


def check_offline(model: ModelConfig, data_paths: dict[str, str | None]) -> None:
    """Offline (HF_HUB_OFFLINE), a hub model whose config.json is not in the local cache, and any hub dataset, are
    refused with one message each saying how to provide them locally."""
    if not offline():
        return
    if is_hub_model(model):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model.name, "config.json", revision=model.revision), str):
            raise ConfigError(f"model.name: {model.name} is a hub model, HF_HUB_OFFLINE is set and it is not in the "
                              f"local cache; download it where there is network (huggingface-cli download "
                              f"{model.name} --local-dir DIR) and set model.name=DIR, or unset HF_HUB_OFFLINE")
    for key, path in data_paths.items():
        if path and path.startswith(HUB_PREFIX):
            name = path.removeprefix(HUB_PREFIX)
            raise DataError(f"{key}: {path} is a hub dataset and HF_HUB_OFFLINE is set (ftlab streams hub datasets, "
                            f"which needs the network); where there is network, save it as JSONL (datasets."
                            f"load_dataset('{name}', split=...).to_json('data.jsonl')) and set {key} to the file")

"""What a run is checked for before its directory is written, so that a run refused for its model or data leaves no
--out behind and the fixed config can use the same --out.

    preflight_run(cfg)     # architectures.preflight, the model's weight files, the data's first records

Cheap by design: the model's config.json and the headers of its safetensors files (not the tensors), and the first
PREFLIGHT_RECORDS records of each data file. Everything is checked again, completely, as training reads it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from ftlab.architectures import preflight
from ftlab.builtin import BUILTIN_PREFIX, builtin_model_dir
from ftlab.config import HUB_PREFIX, DataConfig, RunConfig
from ftlab.data import detect_format, prompt_response, read_records
from ftlab.model import require_bitsandbytes
from ftlab.packing import document_text
from ftlab.weights import check_headers

PREFLIGHT_RECORDS = 8  # records of each data file read before the run directory is written


def preflight_run(cfg: RunConfig, sharded: bool = False) -> None:
    """Refuse, with an FtlabError naming the key, file or line: what the model's architecture cannot do with cfg
    (architectures.preflight), a local model without readable safetensors weights, and data whose first records
    are not of the shape the run reads (built-in data is ftlab's own; hub data is not read before training)."""
    preflight(cfg, sharded)
    if cfg.method.name == "qlora":
        require_bitsandbytes()
    name = cfg.model.name
    model_dir = builtin_model_dir(name) if name.startswith(BUILTIN_PREFIX) else Path(name)
    if name != "tiny" and model_dir.is_dir():
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

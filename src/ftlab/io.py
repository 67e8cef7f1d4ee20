"""Files written so that a kill at any moment leaves the old version or the new one, never half of either.

    write_json(path, data)            # path.tmp, then an atomic rename over path
    tmp = fresh_dir(final); ...; publish_dir(tmp, final)     # a whole directory, the same way
    read_json(path, "an evaluation")  # a damaged file is an FtlabError naming it, never a traceback

Every layer writes through here (training, evaluation, analysis, the study runner, the report): one neutral module
at the bottom of the import graph, importing nothing of ftlab but its errors.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from ftlab.errors import FtlabError


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    path = Path(path)
    tmp = _tmp(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the file
    os.replace(tmp, path)


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(data, indent=indent) + ("\n" if indent is not None else ""))


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def fresh_dir(directory: str | Path) -> Path:
    """An empty `<directory>.tmp` to build a directory in (a leftover of a killed attempt is removed first)."""
    tmp = _tmp(Path(directory))
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path, directory: str | Path) -> None:
    """Make the finished `tmp` the directory: a rename, after removing what was there (a kill after a rename but
    before whatever records it leaves a complete directory that is rewritten identically)."""
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)


def read_json(path: str | Path, what: str = "file") -> Any:
    """The JSON in `path`; a missing, unreadable or damaged file is an FtlabError that names it and says what to do."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FtlabError(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FtlabError(f"{path}: {what} is damaged ({e}); delete it and run the command that wrote it again") \
            from None

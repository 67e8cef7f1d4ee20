"""Files written so that a kill at any moment leaves the old version or the new one, never half of either.

    write_json(path, data)            # path.tmp, then an atomic rename over path
    tmp = fresh_dir(final); ...; publish_dir(tmp, final)     # a whole directory, the same way
    copy_dir(source, final)           # a copy of a directory, published the same way
    read_json(path, "an evaluation")  # a damaged file is an FtlabError naming it, never a traceback
    read_jsonl(path)                  # [(FILE:LINE, record)]; a bad line is a DataError naming FILE:LINE:COLUMN

Every layer writes through here (training, evaluation, analysis, the study runner, the report): one neutral module
at the bottom of the import graph, importing nothing of ftlab but its errors.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

from ftlab.errors import DataError, FtlabError

TMP_SUFFIX = ".tmp"  # what is being written: readers skip a file or directory with this suffix


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + TMP_SUFFIX)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    path = Path(path)
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the file
    os.replace(tmp, path)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


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


def copy_dir(source: str | Path, directory: str | Path, ignore: Callable | None = None) -> None:
    """Copy the directory `source` to `directory`, built under the temporary name and published by a rename.
    ignore: shutil.copytree's (e.g. shutil.ignore_patterns("ftlab.json"))."""
    tmp = fresh_dir(directory)
    tmp.rmdir()  # copytree makes it
    shutil.copytree(source, tmp, ignore=ignore)
    publish_dir(tmp, directory)


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


def read_jsonl(path: str | Path) -> list[tuple[str, dict]]:
    """(FILE:LINE, record) for every non-blank line of a .jsonl or .jsonl.gz file; a missing file, or a line that is
    not UTF-8, not JSON (named FILE:LINE, with the column) or not a JSON object, is a DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{i}: not UTF-8 ({e.reason} at byte {e.start + 1} of the line)") from None
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{i}: expected a JSON object, got a JSON {type(record).__name__}")
            rows.append((f"{path}:{i}", record))
    return rows

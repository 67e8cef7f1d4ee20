"""Reading data records: JSONL lines, whole text files, hub rows, from a file, a directory or a hub dataset; resumable.

    for source, line, record in read_records("data/", cfg): ...     # malformed lines fail naming FILE:LINE
    for source, line, record, after in records_from(sources, cfg, Position(1, 2048, 17)): ...   # from a position

A position in the data is (file index, byte offset of the next unread JSONL line, lines read so far), or for a
hub dataset (0, rows read, rows read): resuming seeks there instead of re-reading what came before. IFT examples
(ftlab.data) and CPT text (ftlab.packing) both read through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ftlab.config import HUB_PREFIX, DataConfig
from ftlab.errors import DataError
from ftlab.io import parse_json_line

JSONL_SUFFIXES = (".jsonl", ".json-lines")
TEXT_SUFFIXES = (".txt", ".md")  # a whole file is one document


@dataclass
class Position:
    """Where the next unread record is."""

    file: int = 0  # index into the sorted list of sources
    offset: int = 0  # JSONL: byte offset of the next unread line; hub: rows read
    line: int = 0  # lines (rows) read so far in that source; the next record's line number is > line


def list_sources(path: str) -> list[str]:
    """The files `path` stands for: itself, every JSONL/text file under a directory (sorted), or a hub name."""
    if path.startswith(HUB_PREFIX):
        return [path]
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in JSONL_SUFFIXES + TEXT_SUFFIXES)
        if not files:
            raise DataError(f"{path}: directory holds no {', '.join(JSONL_SUFFIXES + TEXT_SUFFIXES)} files")
        return [str(f) for f in files]
    if not p.is_file():
        raise DataError(f"{path}: no such file or directory")
    if p.suffix not in JSONL_SUFFIXES + TEXT_SUFFIXES:
        raise DataError(f"{path}: unsupported file type; expected {', '.join(JSONL_SUFFIXES + TEXT_SUFFIXES)}, "
                        f"a directory of them, or {HUB_PREFIX}owner/name")
    return [str(p)]


def _jsonl_rows(source: str, offset: int, line: int) -> Iterator[tuple[int, dict, int]]:
    """(line number, record, byte offset after the line) from `offset` on; blank lines are skipped."""
    with open(source, "rb") as fh:
        fh.seek(offset)
        while raw := fh.readline():
            line += 1
            if not raw.strip():
                continue
            record = parse_json_line(raw, f"{source}:{line}")
            yield line, record, fh.tell()


def _hub_rows(source: str, cfg: DataConfig, skip: int) -> Iterator[tuple[int, dict]]:
    """(row index + 1, row) of a streamed hub dataset, after the first `skip` rows."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{source}: reading hub datasets needs the `datasets` package: "
                        "pip install 'ftlab[hub]'") from None
    rows = datasets.load_dataset(source[len(HUB_PREFIX):], cfg.hub_config, data_dir=cfg.hub_data_dir,
                                 split=cfg.hub_split, streaming=True)
    if skip:
        rows = rows.skip(skip)
    for index, row in enumerate(rows, start=skip):
        yield index + 1, dict(row)


def _read_text(source: str) -> str:
    try:
        return Path(source).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def records_from(sources: list[str], cfg: DataConfig, start: Position) -> Iterator[tuple[str, int, dict, Position]]:
    """(source, line number, record, position after it) for every record from `start` on."""
    for f in range(start.file, len(sources)):
        source = sources[f]
        offset, line = (start.offset, start.line) if f == start.file else (0, 0)
        if source.startswith(HUB_PREFIX):
            for row, record in _hub_rows(source, cfg, offset):
                yield source, row, record, Position(f, row, row)
        elif Path(source).suffix in TEXT_SUFFIXES:
            yield source, 1, {cfg.text_field: _read_text(source)}, Position(f + 1, 0, 0)
        else:
            for row, record, end in _jsonl_rows(source, offset, line):
                yield source, row, record, Position(f, end, row)


def read_records(path: str, cfg: DataConfig) -> Iterator[tuple[str, int, dict]]:
    """(source, line number, record) for every record under `path`; malformed lines fail naming FILE:LINE."""
    for source, line, record, _ in records_from(list_sources(path), cfg, Position()):
        yield source, line, record

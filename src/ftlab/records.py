"""Reading data records: JSONL lines, whole text files, hub rows, from a file, a directory or a hub dataset; resumable.

    for source, line, record in read_records("data/", cfg): ...     # malformed lines fail naming FILE:LINE
    for source, line, record, after in records_from(sources, cfg, Position(1, 2048, 17)): ...   # from a position

A position in the data is (file index, byte offset of the next unread JSONL line, lines read so far), or for a
hub dataset (0, rows read, rows read): resuming seeks there instead of re-reading what came before. IFT examples
(ftlab.data) and CPT text (ftlab.packing) both read through here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ftlab.config import HUB_PREFIX, DataConfig
from ftlab.errors import DataError
from ftlab.io import parse_json_line

JSONL_SUFFIXES = (".jsonl", ".json-lines")
TEXT_SUFFIXES = (".txt", ".md")  # a whole file is one document (past MAX_RECORD_BYTES, one per piece)
MAX_RECORD_BYTES = 64 * 2**20  # what one record (a JSONL line, a piece of a text file) may hold


@dataclass
class Position:
    """Where the next unread record is."""

    file: int = 0  # index into the sorted list of sources
    offset: int = 0  # JSONL: byte offset of the next unread line; text: of the next piece; hub: rows read
    line: int = 0  # lines (pieces, rows) read so far in that source; the next record's line number is > line


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
    """(line number, record, byte offset after the line) from `offset` on; blank lines are skipped, and so is a
    line of more than MAX_RECORD_BYTES, with a message, after reading at most that much of it at a time."""
    with open(source, "rb") as fh:
        fh.seek(offset)
        while raw := fh.readline(MAX_RECORD_BYTES + 1):
            line += 1
            if len(raw) > MAX_RECORD_BYTES and not raw.endswith(b"\n"):
                size = len(raw) + _skip_line(fh)
                print(f"ftlab: {source}:{line}: a record of {size / 2**20:,.0f} MiB, over the "
                      f"{MAX_RECORD_BYTES // 2**20} MiB a record may hold; skipped", file=sys.stderr, flush=True)
                continue
            if not raw.strip():
                continue
            record = parse_json_line(raw, f"{source}:{line}")
            yield line, record, fh.tell()


def _skip_line(fh) -> int:
    """Read past the rest of the current line, a MiB at a time; the bytes skipped."""
    skipped = 0
    while piece := fh.readline(2**20):
        skipped += len(piece)
        if piece.endswith(b"\n"):
            break
    return skipped


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


def _text_pieces(source: str, offset: int, piece: int) -> Iterator[tuple[int, str, int]]:
    """(piece number, text, byte offset after it) of a text file from `offset` on: the whole file as piece 1, or,
    past MAX_RECORD_BYTES, pieces of at most that many bytes, each ending at a line end where one is found."""
    with open(source, "rb") as fh:
        fh.seek(offset)
        while data := fh.read(MAX_RECORD_BYTES):
            if len(data) == MAX_RECORD_BYTES:
                cut = data.rfind(b"\n") + 1 or _char_boundary(data)
                fh.seek(offset + cut)
                data = data[:cut]
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{source}: not UTF-8 text ({e.reason} at byte {offset + e.start})") from None
            offset += len(data)
            piece += 1
            yield piece, text, offset


def records_from(sources: list[str], cfg: DataConfig, start: Position) -> Iterator[tuple[str, int, dict, Position]]:
    """(source, line number, record, position after it) for every record from `start` on."""
    for f in range(start.file, len(sources)):
        source = sources[f]
        offset, line = (start.offset, start.line) if f == start.file else (0, 0)
        if source.startswith(HUB_PREFIX):
            for row, record in _hub_rows(source, cfg, offset):
                yield source, row, record, Position(f, row, row)
        elif Path(source).suffix in TEXT_SUFFIXES:
            for piece, text, end in _text_pieces(source, offset, line):
                yield source, piece, {cfg.text_field: text}, Position(f, end, piece)
        else:
            for row, record, end in _jsonl_rows(source, offset, line):
                yield source, row, record, Position(f, end, row)


def _char_boundary(data: bytes) -> int:
    """The last position in UTF-8 `data` where a character starts (not inside a multi-byte one), 0 if none."""
    cut = len(data) - 1
    while cut > 0 and data[cut] & 0xC0 == 0x80:  # a continuation byte
        cut -= 1
    return cut or len(data)


def read_records(path: str, cfg: DataConfig) -> Iterator[tuple[str, int, dict]]:
    """(source, line number, record) for every record under `path`; malformed lines fail naming FILE:LINE."""
    for source, line, record, _ in records_from(list_sources(path), cfg, Position()):
        yield source, line, record

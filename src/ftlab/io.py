"""Files written so that a kill at any moment leaves the old version or the new one, never half of either.

    write_json(path, data)            # path.tmp, then an atomic rename over path
    tmp = fresh_dir(final); ...; publish_dir(tmp, final)     # a whole directory, the same way
    copy_dir(source, final)           # a copy of a directory, published the same way
    read_json(path, "an evaluation")  # a damaged file is an FtlabError naming it, never a traceback
    read_jsonl(path)                  # [(FILE:LINE, record)]; a bad line is a DataError naming FILE:LINE:COLUMN
    manifest = file_digests(directory, names)   # {name: {size, sha256}} of files just written
    damaged_files(directory, manifest)          # what no longer matches it: ["model.safetensors: 120 bytes, ..."]

Every layer writes through here (training, evaluation, analysis, the study runner, the report): one neutral module
at the bottom of the import graph, importing nothing of ftlab but its errors.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable

from ftlab.errors import DataError, DiskFull, FtlabError

TMP_SUFFIX = ".tmp"  # what is being written: readers skip a file or directory with this suffix
_UNFINISHED: dict[Path, int | None] = {}  # temporary files and directories being written now: {path: bytes needed}


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + TMP_SUFFIX)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically. A full disk is a DiskFull naming the path; nothing is left behind."""
    path = Path(path)
    tmp = _tmp(path)
    _UNFINISHED[tmp] = len(data)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the file
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if no_space(e):
            raise disk_full(e) from None
        raise
    finally:
        _UNFINISHED.pop(tmp, None)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(data, indent=indent) + ("\n" if indent is not None else ""))


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def fresh_dir(directory: str | Path) -> Path:
    """An empty `<directory>.tmp` to build a directory in (a leftover of a killed attempt is removed first)."""
    directory = Path(directory)
    tmp = _tmp(directory)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    _UNFINISHED[tmp] = _size(_previous(directory))  # about what it needs
    return tmp


def _previous(directory: Path) -> Path | None:
    """The directory's last version, else its newest sibling (the state or checkpoint saved before it)."""
    if directory.is_dir():
        return directory
    siblings = [d for d in directory.parent.glob("*") if d.is_dir() and not d.name.endswith(TMP_SUFFIX)]
    return max(siblings, key=lambda d: d.stat().st_mtime, default=None)


def publish_dir(tmp: Path, directory: str | Path) -> None:
    """Make the finished `tmp` the directory: a rename, after removing what was there (a kill after a rename but
    before whatever records it leaves a complete directory that is rewritten identically)."""
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    _UNFINISHED.pop(tmp, None)


def copy_dir(source: str | Path, directory: str | Path, ignore: Callable | None = None) -> None:
    """Copy the directory `source` to `directory`, built under the temporary name and published by a rename.
    ignore: shutil.copytree's (e.g. shutil.ignore_patterns("ftlab.json"))."""
    tmp = fresh_dir(directory)
    tmp.rmdir()  # copytree makes it
    _UNFINISHED[tmp] = _size(Path(source))
    shutil.copytree(source, tmp, ignore=ignore)
    publish_dir(tmp, directory)


# ----------------------------------------------------------------------------- where output goes


def check_writable(path: str | Path, directory: bool, what: str = "--out") -> None:
    """Refuse, before anything is written, an output that cannot be made there: a directory where a file is (or a
    file where a directory is), a path under a file, or a place that cannot be written (a read-only filesystem,
    no permission). An FtlabError names the path and what to do."""
    path = Path(path).absolute()
    if path.exists() and path.is_dir() != directory:
        kind, wanted = ("a file", "a directory") if directory else ("a directory", "a file")
        raise FtlabError(f"{what} {path}: {kind} is there, and this needs {wanted} (created, or one it wrote "
                         "before); choose another path")
    existing = path if directory else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise FtlabError(f"{what} {path}: {existing} is a file, so nothing can be made under it; choose another "
                         "path")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only filesystem" if _read_only(existing) else "no permission to write there"
        raise FtlabError(f"{what} {path}: {existing} cannot be written ({why}); choose another path")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# ----------------------------------------------------------------------------- a full disk


def no_space(e: BaseException) -> bool:
    """Whether an error is a full disk (or quota): OSError ENOSPC/EDQUOT, or safetensors' error carrying it."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return "os error 28" in str(e) or "No space left on device" in str(e)


def disk_full(e: BaseException) -> DiskFull:
    """The DiskFull for a no-space error met while writing: what was being written (the temporary files and
    directories in progress, which are removed), the space free where it goes, and about how much it needs."""
    unfinished = sorted(_UNFINISHED.items(), key=lambda item: str(item[0]))
    where = [p for p, _ in unfinished] or ([Path(e.filename)] if getattr(e, "filename", None) else [])
    needed = sum(n for _, n in unfinished if n)
    remove_unfinished()
    if not where:
        return DiskFull(f"no space left on the device being written ({e})")
    target = where[-1].with_name(where[-1].name.removesuffix(TMP_SUFFIX))
    free = shutil.disk_usage(_existing(target)).free
    need = f"; it needs about {_gib(needed)}" if needed else ""
    return DiskFull(f"no space left on the device writing {target} ({_gib(free)} free there{need}); nothing was "
                    "left half-written: free some space and run the same command again, it goes on from where it "
                    "stopped")


def remove_unfinished() -> None:
    """Remove the temporary files and directories this process was writing (a write that cannot finish)."""
    for path in list(_UNFINISHED):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        _UNFINISHED.pop(path, None)


def _size(directory: Path | None) -> int | None:
    return None if directory is None else sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


RERUN = "delete it and run the command that wrote it again"  # what to do about a damaged file, unless told better


def read_json(path: str | Path, what: str = "file", fix: str = RERUN, kind: type = dict) -> Any:
    """The JSON in `path`; a missing, unreadable or damaged file (or one whose top level is not `kind`) is an
    FtlabError that names it and says what to do (`fix`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FtlabError(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FtlabError(f"{path}: {what} is damaged ({e}); {fix}") from None
    if not isinstance(data, kind):
        raise FtlabError(f"{path}: {what} is damaged (a JSON {type(data).__name__} where a JSON "
                         f"{_JSON_NAMES.get(kind, kind.__name__)} belongs); {fix}")
    return data


_JSON_NAMES = {dict: "object", list: "array"}
BOM = b"\xef\xbb\xbf"  # the UTF-8 byte order mark some editors put first in a file


def parse_json_line(raw: bytes, where: str) -> dict:
    """One line of a JSONL file as a JSON object; `where` (FILE:LINE) names it in a DataError that gives the
    column (characters from 1, as an editor counts them) of what is wrong. A UTF-8 byte order mark at the start
    of the line is skipped, as editors do."""
    raw = raw.removeprefix(BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        column = len(raw[:e.start].decode("utf-8")) + 1
        raise DataError(f"{where}: not UTF-8 ({e.reason}: byte 0x{raw[e.start]:02x} at column {column}); "
                        "expected one JSON object per line, in UTF-8") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        before = text[:e.pos].rstrip()  # a trailing comma is reported where the parser stopped: the } or ] after it
        trailing = before.endswith(",") and text[e.pos:e.pos + 1] in ("}", "]")
        what = f"a trailing comma at column {len(before)}" if trailing else f"{e.msg} at column {e.colno}"
        raise DataError(f"{where}: not valid JSON ({what}); expected one JSON object per line") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got a JSON {type(record).__name__} (one JSON object per "
                        "line)")
    return record


def read_jsonl(path: str | Path, fix: str | None = None) -> list[tuple[str, dict]]:
    """(FILE:LINE, record) for every non-blank line of a .jsonl or .jsonl.gz file; a missing file, or a line that is
    not UTF-8, not JSON (named FILE:LINE, with the column) or not a JSON object, is a DataError, which ends with
    `fix` (what to do) when given: a file ftlab wrote."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rb") as f:
            for i, raw in enumerate(f, start=1):
                if raw.strip():
                    rows.append((f"{path}:{i}", parse_json_line(raw, f"{path}:{i}")))
    except (OSError, EOFError, zlib.error) as e:  # a damaged gzip stream
        raise DataError(f"{path}: unreadable ({e})" + (f"; {fix}" if fix else "")) from None
    except DataError as e:
        if fix is None:
            raise
        raise DataError(f"{e}; the file is damaged: {fix}") from None
    return rows


# ----------------------------------------------------------------------------- checksums


def file_digest(path: str | Path, sync: bool = False) -> dict:
    """{size, sha256} of a file, read back from disk in 1 MiB pieces. sync: first make sure its bytes are on disk
    (a file just written, before the directory holding it is published by a rename)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        if sync:
            os.fsync(f.fileno())
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def file_digests(directory: str | Path, names: Iterable[str]) -> dict[str, dict]:
    """{name: {size, sha256}} of the files `names` (paths relative to `directory`, with /), just written: each is
    synced to disk and read back whole."""
    return {name: file_digest(Path(directory) / name, sync=True) for name in names}


def damaged_files(directory: str | Path, manifest: dict[str, dict]) -> list[str]:
    """What in `directory` no longer matches `manifest` (file_digests'), one line per file: missing, another size,
    another checksum (the checksum is read only when the size is right)."""
    problems = []
    for name, expected in manifest.items():
        path = Path(directory) / name
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        size = path.stat().st_size
        if size != expected["size"]:
            problems.append(f"{path}: {size} bytes, {expected['size']} when written (truncated or overwritten)")
        elif file_digest(path)["sha256"] != expected["sha256"]:
            problems.append(f"{path}: its bytes changed since it was written (sha256 differs)")
    return problems

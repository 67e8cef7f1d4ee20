"""The shipped files of the built-in domains: how they are made from the Python stdlib, and how they are read back.

    python scripts/build_domains.py            # rewrites src/ftlab/domains/data/{source,code}.jsonl.gz

The source and code domains are processed once, on the Python named in PYTHON_VERSION, and shipped as gzipped
JSONL (mtime 0, sorted ids), so every machine reads identical bytes whatever its own Python install holds.
Rerunning the build on that Python reproduces the shipped bytes exactly. Everything iterated is sorted, so the
result does not depend on PYTHONHASHSEED or import order.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import importlib
import inspect
import io
import json
import pkgutil
import re
import sys
import textwrap
import warnings
from importlib import resources
from pathlib import Path

from ftlab.io import write_bytes

PYTHON_VERSION = "3.11.7"  # the stdlib the shipped files were built from
FILES = ("source.jsonl.gz", "code.jsonl.gz")
HELDOUT_PERCENT = 5  # share of ids held out, by hash (see is_heldout)
MIN_DOC_CHARS = 200  # shorter source documents are dropped
CODE_LINES = (3, 40)  # code domain: functions of this many source lines, inclusive

# The stdlib modules and packages (with every submodule but tests) read for both domains: a fixed, sorted list of
# the pure-Python stdlib of PYTHON_VERSION. Left out: modules with side effects on import (antigravity, this,
# turtledemo, idlelib, ensurepip, venv), ones needing optional C parts or another platform (curses, dbm.gnu,
# asyncio.windows_*), the test suite, __main__ submodules (they run a program), generated tables (encodings,
# _sysconfigdata*, pydoc_data: its topics are read separately below) and lib2to3 (it does not import here).
STDLIB_ROOTS = sorted("""
    __future__ _aix_support _bootsubprocess _collections_abc _compat_pickle _compression _markupbase _osx_support
    _py_abc _pydecimal _pyio _sitebuiltins _strptime _threading_local _weakrefset abc aifc argparse ast asynchat
    asyncio asyncore base64 bdb bisect bz2 cProfile calendar cgi cgitb chunk cmd code codecs codeop collections
    colorsys compileall concurrent configparser contextlib contextvars copy copyreg crypt csv ctypes dataclasses
    datetime dbm decimal difflib dis distutils doctest email enum filecmp fileinput fnmatch fractions ftplib functools
    genericpath getopt getpass gettext glob graphlib gzip hashlib heapq hmac html http imaplib imghdr imp importlib
    inspect io ipaddress json keyword linecache locale logging lzma mailbox mailcap mimetypes modulefinder
    multiprocessing netrc nntplib ntpath nturl2path numbers opcode operator optparse os pathlib pdb pickle
    pickletools pipes pkgutil platform plistlib poplib posixpath pprint profile pstats pty py_compile pyclbr pydoc
    queue quopri random re reprlib rlcompleter runpy sched secrets selectors shelve shlex shutil signal site smtpd
    smtplib sndhdr socket socketserver sqlite3 sre_compile sre_constants sre_parse ssl stat statistics string
    stringprep struct subprocess sunau symtable sysconfig tabnanny tarfile telnetlib tempfile textwrap threading
    timeit tkinter token tokenize tomllib trace traceback tracemalloc tty turtle types typing unittest urllib uu uuid
    warnings wave weakref webbrowser wsgiref xdrlib xml xmlrpc zipapp zipfile zipimport zoneinfo
""".split())
SKIP_SUBMODULES = ("asyncio.windows_events", "asyncio.windows_utils", "dbm.gnu", "dbm.ndbm",
                   "multiprocessing.popen_spawn_win32")
# Built-in (C) modules whose docstrings join the source domain: the core types and functions are documented
# only there (str, list, dict, open, len, itertools, math, ...).
C_MODULES = sorted("""
    _io array binascii builtins cmath errno gc itertools marshal math posix select sys time unicodedata zlib
""".split())

UNDERLINE = re.compile(r"^\s*([=\-*~^#+\"'`.])\1{2,}\s*$")  # a reST heading underline or table rule


# ---- reading the shipped files ---------------------------------------------------------------------------------

def is_heldout(doc_id: str) -> bool:
    """The train / held-out split: a fixed HELDOUT_PERCENT of ids, by the first 8 bytes of sha256(id)."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") % 100 < HELDOUT_PERCENT


def in_split(records, split: str, key) -> list[dict]:
    """The records whose id, key(record), falls in `split` ("train" or "heldout") by is_heldout."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    return [r for r in records if is_heldout(key(r)) == (split == "heldout")]


def read_shipped(name: str) -> list[dict]:
    """The records of one shipped file (data/<name>), through importlib.resources."""
    data = resources.files("ftlab.domains").joinpath("data", name).read_bytes()
    return [json.loads(line) for line in gzip.decompress(data).decode().splitlines()]


# ---- cleaning ----------------------------------------------------------------------------------------------------

WORD = re.compile(r"""^[("'*]*[A-Za-z][a-z'’-]*[)"'*,.;:!?]*$""")  # a plain English word, maybe quoted/punctuated


def _is_prose(lines: list[str]) -> bool:
    """Mostly plain words, and not laid out like code (a line ending in ':' opening a deeper-indented block)."""
    tokens = " ".join(lines).split()
    if len(tokens) < 2 or sum(bool(WORD.match(t)) for t in tokens) < 0.6 * len(tokens) or "::=" in tokens:
        return False
    depth = [len(line) - len(line.lstrip()) for line in lines]
    opens_block = any(line.rstrip().endswith(":") and depth[i + 1] > depth[i] for i, line in enumerate(lines[:-1]))
    return not opens_block


def clean_prose(text: str) -> str:
    """Dedent; drop doctest examples, code and grammar blocks, heading underlines; one line per paragraph."""
    text = inspect.cleandoc(text.expandtabs())
    paragraphs = []
    for block in re.split(r"\n[ \t]*\n", text):
        lines = []
        for line in block.split("\n"):
            if line.lstrip().startswith(">>>"):
                break  # a doctest example and its output run to the end of the paragraph
            if line.strip() and not UNDERLINE.match(line):
                lines.append(line)
        if lines and _is_prose(lines):
            paragraphs.append(" ".join(" ".join(lines).split()))
    return "\n".join(paragraphs)


# ---- the source domain -----------------------------------------------------------------------------------------

def _import(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated modules (cgi, ...) warn on import
        return importlib.import_module(name)


def stdlib_modules() -> list[str]:
    """STDLIB_ROOTS and all their submodules (tests and SKIP_SUBMODULES left out), in sorted order."""

    def walk(name: str) -> list[str]:
        module = _import(name)
        names = [name]
        for info in sorted(pkgutil.iter_modules(getattr(module, "__path__", [])), key=lambda i: i.name):
            sub = f"{name}.{info.name}"
            if not info.name.startswith(("test", "idle_test", "__main__")) and sub not in SKIP_SUBMODULES:
                names += walk(sub)
        return names

    return [name for root in STDLIB_ROOTS for name in walk(root)]


def _raw_docstrings(modname: str) -> list[tuple[str, str]]:
    """(id, docstring) of a module and of the classes, functions and methods it defines, sorted by name.

    Only the object's own __doc__ (never an inherited one), and only objects whose __module__ is this module,
    so a re-exported name is documented once, where it is defined.
    """
    module = _import(modname)
    out = [(f"doc:{modname}", module.__doc__)]

    def defined_here(obj) -> bool:
        return getattr(obj, "__module__", None) == modname

    for name, obj in sorted(vars(module).items()):
        if inspect.isroutine(obj) and defined_here(obj):
            out.append((f"doc:{modname}.{name}", obj.__doc__))
        elif inspect.isclass(obj) and defined_here(obj) and obj.__qualname__ == name:
            out.append((f"doc:{modname}.{name}", vars(obj).get("__doc__")))
            for attr, member in sorted(vars(obj).items()):
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member) and not defined_here(member):
                    continue  # a function assigned from another module
                if inspect.isroutine(member) or inspect.isdatadescriptor(member):
                    out.append((f"doc:{modname}.{name}.{attr}", getattr(member, "__doc__", None)))
    return [(i, d) for i, d in out if isinstance(d, str)]


def short_name(doc_id: str) -> str:
    """The name a docstring documents, from its id: 'doc:os.path.join' -> 'join'."""
    return doc_id.removeprefix("doc:").rsplit(".", 1)[-1]


def _topic_sections(name: str, text: str) -> list[tuple[str, str]]:
    """A language-reference topic cut at its headings (a line followed by an underline), one document each."""
    lines = text.split("\n")
    starts = [0] + [i for i in range(1, len(lines) - 1) if UNDERLINE.match(lines[i + 1]) and lines[i].strip()]
    starts = sorted(set(starts))
    bounds = zip(starts, starts[1:] + [len(lines)])
    return [(f"topic:{name}#{k}", "\n".join(lines[a:b])) for k, (a, b) in enumerate(bounds)]


def collect_source() -> list[dict]:
    """{id, text} documents of the source domain, sorted by id, each text unique and >= MIN_DOC_CHARS long."""
    from pydoc_data.topics import topics

    raw = []
    for modname in stdlib_modules() + C_MODULES:
        items = [(doc_id, clean_prose(text)) for doc_id, text in _raw_docstrings(modname)]
        raw += [(doc_id, text) for doc_id, text in items if len(text) >= MIN_DOC_CHARS]
        # The short docstrings of a module (one-liners, mostly) make one document, a "name: docstring" line each,
        # as pydoc lists them.
        short = [f"{short_name(doc_id)}: {text}" for doc_id, text in items if 0 < len(text) < MIN_DOC_CHARS]
        raw.append((f"doc:{modname}#short", "\n".join(short)))
    for name in sorted(topics):
        raw += [(doc_id, clean_prose(text)) for doc_id, text in _topic_sections(name, topics[name])]
    docs, seen = [], set()
    for doc_id, text in sorted(raw):
        if len(text) >= MIN_DOC_CHARS and text not in seen:
            seen.add(text)
            docs.append({"id": doc_id, "text": text})
    return docs


# ---- the code domain -------------------------------------------------------------------------------------------

def collect_code() -> list[dict]:
    """{id, module, name, docstring, source} of the stdlib's top-level functions CODE_LINES long, sorted by id.

    Source is read from the module file with `ast` (not inspect), so decorators are included and a function
    redefined later in its module counts once (its last definition). Duplicate sources are kept once.
    """
    records, seen = [], set()
    for modname in stdlib_modules():
        path = _import(modname).__file__
        text = Path(path).read_text(encoding="utf-8")
        lines = text.split("\n")
        functions = {}
        for node in ast.parse(text).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions[node.name] = node  # the last definition wins, as at import time
        for name, node in sorted(functions.items()):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            source = textwrap.dedent("\n".join(lines[first - 1:node.end_lineno])).rstrip() + "\n"
            n_lines = source.count("\n")
            if not CODE_LINES[0] <= n_lines <= CODE_LINES[1] or source in seen:
                continue
            seen.add(source)
            docstring = ast.get_docstring(node, clean=True) or ""
            records.append({"id": f"{modname}.{name}", "module": modname, "name": name, "docstring": docstring,
                            "source": source})
    return sorted(records, key=lambda r: r["id"])


# ---- writing -----------------------------------------------------------------------------------------------------

def gzip_jsonl(records: list[dict]) -> bytes:
    """One JSON object per line (keys in the order given, ASCII-escaped), gzipped with mtime 0 and no file name."""
    body = "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in records).encode()
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as f:
        f.write(body)
    return buffer.getvalue()


def build(out_dir: str | Path, check_version: bool = True) -> dict[str, bytes]:
    """Write the shipped files into out_dir; returns {file name: bytes}."""
    version = ".".join(map(str, sys.version_info[:3]))
    if check_version and version != PYTHON_VERSION:
        raise RuntimeError(f"the shipped domains are built from the Python {PYTHON_VERSION} stdlib; this is {version} "
                           f"(its docstrings and sources differ, so the bytes would too)")
    out = {"source.jsonl.gz": gzip_jsonl(collect_source()), "code.jsonl.gz": gzip_jsonl(collect_code())}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in out.items():
        write_bytes(out_dir / name, data)
    return out

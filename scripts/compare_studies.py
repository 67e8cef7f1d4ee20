#!/usr/bin/env python3
"""Compare two studies (two `ftlab run --out` folders, or two folders a report was written into) number by number:
every table of their results stores row by row, and every value of every CSV and of results.json in their report
folders. What differs from one run of the same experiment to the next is left out: training's wall time, speed,
memory and device (and the device-hours made from them), when a row was written, and the folder's own path.

    python scripts/compare_studies.py BEFORE AFTER [--tol 1e-12]   # exit 0: the same; 1: the differences, listed

Numbers compare within --tol (relative to their size, absolute below 1); text compares exactly once each folder's
path is replaced by "<root>"; a JSON text in a store column is compared as the JSON it holds.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sqlite3
import sys
from pathlib import Path

VOLATILE = {"wall_s", "tokens_per_s", "peak_memory_gb", "device", "device_hours", "updated", "path"}
COST_FIGURE = "cost"  # its PNG and table are training's cost, and nothing else


def store_tables(path: Path, root: Path) -> dict[str, dict[tuple, dict]]:
    """table -> primary key -> row (column -> value), volatile columns left out; meta aside."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out = {}
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name != 'meta'"):
            info = db.execute(f"PRAGMA table_info({table})").fetchall()  # (cid, name, type, notnull, dflt, pk)
            names = [c[1] for c in info]
            key = [c[1] for c in sorted(info, key=lambda c: c[5]) if c[5]] or names
            rows = {}
            for values in db.execute(f"SELECT * FROM {table}"):
                row = {n: normal(v, root) for n, v in zip(names, values) if n not in VOLATILE}
                if table == "runs":
                    row["config"] = _without_dir(row["config"])
                rows[tuple(values[names.index(k)] for k in key)] = row
            out[table] = rows
        return out
    finally:
        db.close()


def _without_dir(config):
    """A run's config without output.dir (the run's folder, below the study's)."""
    if isinstance(config, dict):
        config = dict(config)
        config["output"] = {k: v for k, v in config.get("output", {}).items() if k != "dir"}
    return config


def normal(value, root: Path):
    """A value with the folder's path replaced, JSON text parsed."""
    if isinstance(value, str):
        value = value.replace(str(root.resolve()), "<root>").replace(str(root), "<root>")
        if value[:1] in "{[":
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                pass
    return value


def number(x):
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return None
    return None


def differ(a, b, tol: float, where: str, out: list[str]) -> None:
    """Append to `out` every place where a and b differ (numbers within tol)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k in VOLATILE:
                continue
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'after' if k in b else 'before'}")
                continue
            differ(a[k], b[k], tol, f"{where}.{k}", out)
        return
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} items before, {len(b)} after")
        for i, (x, y) in enumerate(zip(a, b)):
            differ(x, y, tol, f"{where}[{i}]", out)
        return
    x, y = number(a), number(b)
    if x is not None and y is not None and not (isinstance(a, str) and isinstance(b, str) and a == b):
        same = (math.isnan(x) and math.isnan(y)) or x == y or abs(x - y) <= tol * max(1.0, abs(x), abs(y))
        if not same:
            out.append(f"{where}: {a!r} before, {b!r} after")
        return
    if a != b:
        out.append(f"{where}: {str(a)[:80]!r} before, {str(b)[:80]!r} after")


def compare_stores(before: Path, after: Path, tol: float) -> tuple[list[str], int]:
    a, b = store_tables(before / "results.sqlite", before), store_tables(after / "results.sqlite", after)
    out, rows = [], 0
    for table in sorted(set(a) | set(b)):
        ra, rb = a.get(table, {}), b.get(table, {})
        for key in sorted(set(ra) ^ set(rb), key=repr):
            out.append(f"results.sqlite {table} {key}: only {'after' if key in rb else 'before'}")
        for key in sorted(set(ra) & set(rb), key=repr):
            rows += 1
            differ(ra[key], rb[key], tol, f"results.sqlite {table} {key}", out)
    return out, rows


def csv_rows(path: Path, root: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: normal(v, root) for k, v in r.items()} for r in csv.DictReader(f)]


def compare_reports(before: Path, after: Path, tol: float) -> tuple[list[str], int]:
    ra, rb = before / "report", after / "report"
    out, values = [], 0
    files = sorted({p.name for p in ra.iterdir()} | {p.name for p in rb.iterdir()})
    for name in files:
        if not (ra / name).exists() or not (rb / name).exists():
            out.append(f"report/{name}: only {'after' if (rb / name).exists() else 'before'}")
            continue
        if name.endswith(".csv"):
            x, y = csv_rows(ra / name, before), csv_rows(rb / name, after)
            if name == f"{COST_FIGURE}.csv":  # training's cost: only the configurations and their quality
                x = [{k: v for k, v in r.items() if k not in VOLATILE} for r in x]
                y = [{k: v for k, v in r.items() if k not in VOLATILE} for r in y]
            values += sum(len(r) for r in x)
            differ(x, y, tol, f"report/{name}", out)
        elif name.endswith(".json"):
            x = json.loads((ra / name).read_text())
            y = json.loads((rb / name).read_text())
            for data, root in ((x, before), (y, after)):
                data.get("study", {}).pop("root", None)
                data["figures"] = [f for f in data.get("figures", []) if f.get("id") != COST_FIGURE]
            x, y = _normal_json(x, before), _normal_json(y, after)
            values += _count(x)
            differ(x, y, tol, f"report/{name}", out)
    return out, values


def _normal_json(data, root: Path):
    if isinstance(data, dict):
        return {k: _normal_json(v, root) for k, v in data.items() if k not in ("cost",)}
    if isinstance(data, list):
        return [_normal_json(v, root) for v in data]
    return normal(data, root) if isinstance(data, str) else data


def _count(data) -> int:
    if isinstance(data, dict):
        return sum(_count(v) for v in data.values())
    if isinstance(data, list):
        return sum(_count(v) for v in data)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--tol", type=float, default=1e-12)
    args = parser.parse_args(argv)
    store, rows = compare_stores(args.before, args.after, args.tol)
    report, values = compare_reports(args.before, args.after, args.tol)
    for line in store + report:
        print(line)
    print(f"results.sqlite: {rows} rows in both, {len(store)} differences; report/: {values} values, "
          f"{len(report)} differences (tolerance {args.tol:g})")
    return 1 if store or report else 0


if __name__ == "__main__":
    sys.exit(main())

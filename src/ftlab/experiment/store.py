"""The results store: SQLite in the experiment directory, one row per run, checkpoint, metric and spectrum entry.

Every write is one transaction and every row has a natural key (INSERT OR REPLACE), so a run killed at any
moment and started again rewrites the same rows: nothing is lost and nothing is duplicated. WAL mode lets
`ftlab status` read while a runner writes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY, setting TEXT NOT NULL, grp TEXT NOT NULL, method TEXT NOT NULL, regime TEXT NOT NULL,
    rank INTEGER, lr REAL NOT NULL, weight_decay REAL NOT NULL, attention_dropout REAL NOT NULL,
    config TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, tokens_per_s REAL, updated REAL);
CREATE TABLE IF NOT EXISTS checkpoints (
    run TEXT NOT NULL, name TEXT NOT NULL, path TEXT NOT NULL, step INTEGER, tokens INTEGER, epoch REAL,
    duration REAL NOT NULL, PRIMARY KEY (run, name));
CREATE TABLE IF NOT EXISTS metrics (
    run TEXT NOT NULL, checkpoint TEXT NOT NULL, task TEXT NOT NULL, version TEXT NOT NULL, metric TEXT NOT NULL,
    value REAL, n INTEGER, stderr REAL, PRIMARY KEY (run, checkpoint, task, metric));
CREATE TABLE IF NOT EXISTS spectra (
    run TEXT NOT NULL, checkpoint TEXT NOT NULL, matrix TEXT NOT NULL, layer INTEGER, module TEXT,
    rows INTEGER, cols INTEGER, k50 INTEGER, k90 INTEGER, k99 INTEGER, k90_frac REAL, rel_change REAL,
    intruders INTEGER, stable_rank REAL, effective_rank REAL, k90_base INTEGER, k90_finetuned INTEGER,
    k90_gaussian INTEGER, PRIMARY KEY (run, checkpoint, matrix));
CREATE TABLE IF NOT EXISTS analyses (
    run TEXT NOT NULL, checkpoint TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (run, checkpoint, kind));
"""
BASE = "(base)"  # the run name under which the base model's results per setting are stored


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _tx(self, statements: list[tuple[str, tuple]]) -> None:
        self.db.execute("BEGIN IMMEDIATE")  # autocommit connection + explicit BEGIN: one atomic transaction
        try:
            for sql, args in statements:
                self.db.execute(sql, args)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------ writes

    def put_run(self, plan, status: str, reason: str | None = None, tokens_per_s: float | None = None) -> None:
        from ftlab.config import to_dict

        cfg = plan.cfg
        rank = cfg.method.rank if cfg.method.name == "lora" else None
        self._tx([("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   (plan.name, plan.setting, plan.group, plan.method, cfg.data.regime, rank, plan.lr,
                    cfg.train.weight_decay, cfg.model.attention_dropout, json.dumps(to_dict(cfg), sort_keys=True),
                    status, reason, tokens_per_s, time.time()))])

    def put_base(self, setting: str) -> None:
        """The pseudo-run that holds a setting's base-model results."""
        self._tx([("INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   (f"{BASE}/{setting}", setting, "base", "base", "", None, 0.0, 0.0, 0.0, "{}", "done", None,
                    None, time.time()))])

    def set_status(self, run: str, status: str, reason: str | None = None) -> None:
        self._tx([("UPDATE runs SET status=?, reason=?, updated=? WHERE name=?", (status, reason, time.time(), run))])

    def put_checkpoint(self, run: str, name: str, path: str, info: dict, duration: float,
                       scores: list[dict]) -> None:
        """A checkpoint and its evaluation scores, in one transaction."""
        rows = [("INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?,?,?)",
                 (run, name, path, info.get("step"), info.get("tokens"), info.get("epoch"), duration))]
        rows += [("INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?,?,?,?)",
                  (run, name, s["task"], s["version"], s["metric"], s["value"], s.get("n"), s.get("stderr")))
                 for s in scores]
        self._tx(rows)

    def put_spectrum(self, run: str, checkpoint: str, matrices: list[dict]) -> None:
        self._tx([("INSERT OR REPLACE INTO spectra VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   (run, checkpoint, m["name"], m.get("layer"), m.get("module"), m["shape"][0], m["shape"][1],
                    m["delta"]["k50"], m["delta"]["k90"], m["delta"]["k99"], m["delta"]["k90_frac"],
                    m.get("rel_change"), m.get("intruders"), m["delta"].get("stable_rank"),
                    m["delta"].get("effective_rank"), m.get("base", {}).get("k90"),
                    m.get("finetuned", {}).get("k90"), m.get("gaussian", {}).get("k90")))
                  for m in matrices])

    def put_analysis(self, run: str, checkpoint: str, kind: str, value: dict) -> None:
        self._tx([("INSERT OR REPLACE INTO analyses VALUES (?,?,?,?)",
                   (run, checkpoint, kind, json.dumps(value, sort_keys=True)))])

    # ------------------------------------------------------------------ reads

    def runs(self) -> dict[str, dict]:
        cur = self.db.execute("SELECT * FROM runs ORDER BY name")
        cols = [c[0] for c in cur.description]
        return {row[0]: dict(zip(cols, row)) for row in cur}

    def has_checkpoint(self, run: str, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM checkpoints WHERE run=? AND name=?", (run, name)).fetchone() is not None

    def has_analysis(self, run: str, checkpoint: str, kind: str) -> bool:
        return self.db.execute("SELECT 1 FROM analyses WHERE run=? AND checkpoint=? AND kind=?",
                               (run, checkpoint, kind)).fetchone() is not None

    def has_spectrum(self, run: str, checkpoint: str) -> bool:
        return self.db.execute("SELECT 1 FROM spectra WHERE run=? AND checkpoint=?",
                               (run, checkpoint)).fetchone() is not None

    def dump(self, volatile: bool = False) -> dict[str, list[tuple]]:
        """Every table's rows, sorted; without the volatile columns (timestamps, speed, paths) unless asked.

        Without them, two studies of one experiment in different directories dump the same: runs.config then
        leaves out output.dir (the run's directory).
        """
        out = {}
        for table in ("runs", "checkpoints", "metrics", "spectra", "analyses"):
            cur = self.db.execute(f"SELECT * FROM {table}")
            cols = [c[0] for c in cur.description]
            keep = [i for i, c in enumerate(cols) if volatile or c not in ("updated", "tokens_per_s", "path")]
            rows = [[row[i] for i in keep] for row in cur]
            if table == "runs" and not volatile:
                at = [cols[i] for i in keep].index("config")
                for row in rows:
                    config = json.loads(row[at])
                    config.get("output", {}).pop("dir", None)
                    row[at] = json.dumps(config, sort_keys=True)
            out[table] = sorted(tuple(row) for row in rows)
        return out

"""The results store: SQLite, the one place every number of a study lives. The report, `ftlab status`, the CSV/JSON
exports and the claims check read it and nothing else; run directories hold artefacts (weights, per-example
records), and ftlab.results.index turns them into rows here.

    store = Store("studies/x/results.sqlite")
    store.study()                     # -> ftlab.results.rows.Study: every row, with per-example values
    sqlite3 studies/x/results.sqlite "SELECT run, checkpoint, value FROM metrics WHERE task='gsm8k'"

Every write is one transaction and every row has a natural key, so a study killed at any moment and started again
rewrites the same rows: nothing is lost and nothing is duplicated. WAL mode lets `ftlab status` read while a
runner writes. The schema (ftlab.results.schema; README "The results store") is versioned in the meta table; a store of
another version is refused with what to do.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from ftlab.errors import FtlabError
from ftlab.results.records import RUN_COLUMNS, SCHEMA, SCHEMA_VERSION, SPECTRUM_COLUMNS, VOLATILE
from ftlab.results.study import read_study

class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            version = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as e:
            raise FtlabError(f"{self.path}: the results store is damaged ({e}); move it aside and run `ftlab run` "
                             "again with the same --out (finished runs are indexed again from their directories)"
                             ) from None
        if version is None:
            self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif version[0] != SCHEMA_VERSION:
            raise FtlabError(f"{self.path}: a results store of schema {version[0]}, written by another ftlab version "
                             f"(this one writes schema {SCHEMA_VERSION}); move it aside to index the runs again")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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

    def put_run(self, record: dict) -> None:
        """A run's row (ftlab.results.index.run_record), replacing the one of that name; keeps its cost columns
        when the record has none."""
        old = self.runs().get(record["name"], {})
        row = {**{k: old.get(k) for k in RUN_COLUMNS}, **record, "updated": time.time()}
        self._tx([(f"INSERT OR REPLACE INTO runs VALUES ({','.join('?' * len(RUN_COLUMNS))})",
                   tuple(row.get(k) for k in RUN_COLUMNS))])

    def put_cost(self, run: str, cost: dict) -> None:
        """wall_s, tokens_per_s, peak_memory_gb, device, trainable_params, total_params of a run."""
        keys = [k for k in ("wall_s", "tokens_per_s", "peak_memory_gb", "device", "trainable_params",
                            "total_params") if k in cost]
        if keys:
            self._tx([(f"UPDATE runs SET {', '.join(f'{k}=?' for k in keys)} WHERE name=?",
                       (*(cost[k] for k in keys), run))])

    def put_checkpoint(self, result) -> None:
        """Everything measured on one checkpoint (ftlab.results.index.CheckpointResult), in one transaction that
        first drops what the store had for it: the checkpoint row last, so its presence means "indexed"."""
        key = (result.run, result.name)
        statements = [(f"DELETE FROM {table} WHERE run=? AND {column}=?", key) for table, column in
                      (("checkpoints", "name"), ("metrics", "checkpoint"), ("examples", "checkpoint"),
                       ("spectra", "checkpoint"), ("analyses", "checkpoint"))]
        statements += [("INSERT OR REPLACE INTO tasks VALUES (?,?,?,?,?)", tuple(t)) for t in result.tasks]
        statements += [("INSERT INTO metrics VALUES (?,?,?,?,?,?,?,?)", (*key, *m)) for m in result.metrics]
        statements += [("INSERT INTO examples VALUES (?,?,?,?,?,?,?)", (*key, *e)) for e in result.examples]
        statements += [(f"INSERT INTO spectra VALUES ({','.join('?' * len(SPECTRUM_COLUMNS))})", (*key, *s))
                       for s in result.spectra]
        statements += [("INSERT INTO analyses VALUES (?,?,?,?)", (*key, kind, json.dumps(value, sort_keys=True)))
                       for kind, value in sorted(result.analyses.items())]
        statements.append(("INSERT INTO checkpoints VALUES (?,?,?,?,?,?,?)",
                           (*key, result.path, result.step, result.tokens, result.epoch, result.duration)))
        self._tx(statements)

    def put_curve(self, run: str, records: list[dict]) -> None:
        """A run's training curve (its metrics log: step, tokens, loss, eval_loss, lr), replacing the one stored."""
        rows = [(run, r["step"], r.get("tokens"), r.get("loss"), r.get("eval_loss"), r.get("lr")) for r in records]
        self._tx([("DELETE FROM curves WHERE run=?", (run,))] +
                 [("INSERT OR REPLACE INTO curves VALUES (?,?,?,?,?,?)", row) for row in rows])

    def put_note(self, source: str, text: str) -> None:
        """Something the report should say (a run skipped while indexing, KL not measured and why)."""
        self._tx([("INSERT OR IGNORE INTO notes VALUES (?,?)", (source, text))])

    # ------------------------------------------------------------------ reads

    def runs(self) -> dict[str, dict]:
        cur = self.db.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs ORDER BY name")
        return {row[0]: dict(zip(RUN_COLUMNS, row)) for row in cur}

    def has_checkpoint(self, run: str, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM checkpoints WHERE run=? AND name=?", (run, name)).fetchone() is not None

    def checkpoint_counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT run, COUNT(*) FROM checkpoints GROUP BY run"))

    def study(self, root: str | Path = ""):
        """The Study in this store (ftlab.results.study builds it)."""
        return read_study(self.db, str(root or self.path.parent))

    def dump(self, volatile: bool = False) -> dict[str, list[tuple]]:
        """Every table's rows, sorted; without the columns that differ run to run (times, speeds, paths) unless
        asked. Without them, two studies of one experiment in different directories dump the same: runs.config
        then leaves out output.dir (the run's directory)."""
        out = {}
        for table in ("runs", "checkpoints", "tasks", "metrics", "examples", "spectra", "analyses", "curves",
                      "notes"):
            cur = self.db.execute(f"SELECT * FROM {table}")
            cols = [c[0] for c in cur.description]
            keep = [i for i, c in enumerate(cols) if volatile or c not in VOLATILE]
            rows = [[row[i] for i in keep] for row in cur]
            if table == "runs" and not volatile:
                at = [cols[i] for i in keep].index("config")
                for row in rows:
                    config = json.loads(row[at])
                    config.get("output", {}).pop("dir", None)
                    row[at] = json.dumps(config, sort_keys=True)
            out[table] = sorted(tuple(row) for row in rows)
        return out

"""The results store: SQLite, the one place every number of a study lives. The report, `ftlab status`, the CSV/JSON
exports and the claims check read it and nothing else; run directories hold artefacts (weights, per-example
records), and ftlab.results.index turns them into records here.

    store = Store("studies/x/results.sqlite")
    store.runs()                                  # name -> RunRecord
    store.records(MetricRecord, "task=?", ("gsm8k",))
    load_study(store)                             # ftlab.results.study: every row, with per-example values
    sqlite3 studies/x/results.sqlite "SELECT run, checkpoint, value FROM metrics WHERE task='gsm8k'"

Every write is one transaction and every row has a natural key, so a study killed at any moment and started again
rewrites the same rows: nothing is lost and nothing is duplicated. WAL mode lets `ftlab status` read while a
runner writes. The tables are the records of ftlab.results.records (README "The results store"); the schema is
versioned in the meta table, and a store of another version is refused with what to do.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from ftlab.errors import FtlabError
from ftlab.results.records import (PER_CHECKPOINT, PLANNED, RUN_COST, SCHEMA, SCHEMA_VERSION, TABLES,
                                   CheckpointRecord, CheckpointResult, CurvePoint, Meta, Note, RunRecord, columns, row,
                                   volatile_columns)

R = TypeVar("R")


def _insert(record, verb: str = "INSERT") -> tuple[str, tuple]:
    table = type(record)
    return f"{verb} INTO {table.TABLE} VALUES ({','.join('?' * len(columns(table)))})", row(record)


def _upsert(record) -> tuple[str, tuple]:
    """Insert, or update the row of the same key in place (it keeps its place: a study's runs stay in plan order)."""
    sql, values = _insert(record)
    table = type(record)
    update = ", ".join(f"{c}=excluded.{c}" for c in columns(table) if c not in table.KEY)
    return f"{sql} ON CONFLICT({', '.join(table.KEY)}) DO UPDATE SET {update}", values


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            version = self.meta("schema")
        except sqlite3.DatabaseError as e:
            raise FtlabError(f"{self.path}: the results store is damaged ({e}); move it aside and run `ftlab run` "
                             "again with the same --out (finished runs are indexed again from their directories)"
                             ) from None
        if version is None:
            self.put_meta("schema", SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            raise FtlabError(f"{self.path}: a results store of schema {version}, written by another ftlab version "
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

    def put_meta(self, key: str, value: str) -> None:
        self._tx([_insert(Meta(key, value), "INSERT OR REPLACE")])

    def put_run(self, record: RunRecord) -> None:
        """A run's row, replacing the one of that name; the cost of its training (put_cost) is kept."""
        old = self.records(RunRecord, "name=?", (record.name,))
        kept = {k: getattr(old[0], k) for k in RUN_COST} if old else {}
        self._tx([_upsert(replace(record, **kept, updated=time.time()))])

    def put_planned(self, records: list[RunRecord]) -> None:
        """The rows of runs not started yet (status left or waiting), in one transaction and in their order: written
        where the store has no row of that name or one that is itself only planned; a run that has started keeps its
        row."""
        runs, now = self.runs(), time.time()
        changed = [r for r in records if r.name not in runs or runs[r.name].status in PLANNED
                   and row(replace(runs[r.name], updated=None)) != row(r)]
        new = [_upsert(replace(r, updated=now)) for r in changed]
        if new:
            self._tx(new)

    def put_cost(self, run: str, cost: dict) -> None:
        """What training the run cost (RUN_COST: wall_s, tokens_per_s, peak_memory_gb, device, parameters)."""
        keys = [k for k in RUN_COST if k in cost]
        if keys:
            self._tx([(f"UPDATE runs SET {', '.join(f'{k}=?' for k in keys)} WHERE name=?",
                       (*(cost[k] for k in keys), run))])

    def put_checkpoint(self, result: CheckpointResult) -> None:
        """Everything measured on one checkpoint, in one transaction that first drops what the store had for it:
        the checkpoint row last, so its presence means "indexed"."""
        c = result.checkpoint
        statements = [(f"DELETE FROM {t.TABLE} WHERE run=? AND checkpoint=?", (c.run, c.name)) for t in PER_CHECKPOINT]
        statements.append((f"DELETE FROM {CheckpointRecord.TABLE} WHERE run=? AND name=?", (c.run, c.name)))
        statements += [_insert(t, "INSERT OR REPLACE") for t in result.tasks]
        statements += [_insert(r) for r in (*result.metrics, *result.examples, *result.spectra, *result.analyses)]
        statements.append(_insert(c))
        self._tx(statements)

    def put_curve(self, run: str, points: list[CurvePoint]) -> None:
        """A run's training curve, replacing the one stored."""
        self._tx([(f"DELETE FROM {CurvePoint.TABLE} WHERE run=?", (run,))] +
                 [_insert(p, "INSERT OR REPLACE") for p in points])

    def put_note(self, source: str, text: str) -> None:
        """Something the report should say (a run skipped while indexing, and why)."""
        self._tx([_insert(Note(source, text), "INSERT OR IGNORE")])

    # ------------------------------------------------------------------ reads

    def records(self, record: type[R], where: str = "", args: tuple = (), order: str = "rowid") -> list[R]:
        """A table's rows as its records (where: an SQL condition on its columns, with ? for args)."""
        sql = f"SELECT {', '.join(columns(record))} FROM {record.TABLE}" + (f" WHERE {where}" if where else "")
        return [record(*values) for values in self.db.execute(f"{sql} ORDER BY {order}", args)]

    def meta(self, key: str) -> str | None:
        found = self.records(Meta, "key=?", (key,))
        return found[0].value if found else None

    def runs(self) -> dict[str, RunRecord]:
        """name -> its row, in the order the rows were first written (a study's: its plan's)."""
        return {r.name: r for r in self.records(RunRecord)}

    def has_checkpoint(self, run: str, name: str) -> bool:
        return bool(self.records(CheckpointRecord, "run=? AND name=?", (run, name)))

    def checkpoint_counts(self) -> dict[str, int]:
        return dict(self.db.execute(f"SELECT run, COUNT(*) FROM {CheckpointRecord.TABLE} GROUP BY run"))

    def dump(self, volatile: bool = False) -> dict[str, list[tuple]]:
        """Every table's rows, sorted; without the volatile columns (times, speeds, paths) unless asked. Without
        them, two studies of one experiment in different directories dump the same: runs.config then leaves out
        output.dir (the run's directory)."""
        out = {}
        for table in TABLES:
            names = columns(table)
            keep = [i for i, c in enumerate(names) if volatile or c not in volatile_columns(table)]
            rows = [[values[i] for i in keep] for values in self.db.execute(f"SELECT * FROM {table.TABLE}")]
            if table is RunRecord and not volatile:
                at = [names[i] for i in keep].index("config")
                for values in rows:
                    config = json.loads(values[at])
                    config.get("output", {}).pop("dir", None)
                    values[at] = json.dumps(config, sort_keys=True)
            out[table.TABLE] = sorted(tuple(values) for values in rows)
        return out

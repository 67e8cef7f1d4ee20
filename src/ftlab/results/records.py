"""The results store's schema: its tables and the names every reader and writer shares."""

from __future__ import annotations

STORE = "results.sqlite"  # a study's store, in its directory (or beside a folder of plain runs)
EXPERIMENT = "experiment.yaml"  # beside the store of a study made by `ftlab run`: the experiment as run
SCHEMA_VERSION = "2"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY,          -- a study's runs/<setting>/<label>/<duration>; "(base)/<setting>" for the base
    setting TEXT NOT NULL, grp TEXT NOT NULL, label TEXT NOT NULL,
    method TEXT NOT NULL,           -- full | lora | base
    regime TEXT NOT NULL, rank INTEGER, alpha REAL, targets TEXT, variant TEXT, lr REAL, weight_decay REAL,
    attention_dropout REAL, optimizer TEXT, seed INTEGER, duration_unit TEXT,
    config TEXT NOT NULL,           -- the resolved run config, JSON
    status TEXT NOT NULL,           -- left | running | done | failed
    reason TEXT,                    -- why it failed
    wall_s REAL, tokens_per_s REAL, peak_memory_gb REAL, device TEXT, trainable_params INTEGER,
    total_params INTEGER, updated REAL);
CREATE TABLE IF NOT EXISTS checkpoints (
    run TEXT NOT NULL, name TEXT NOT NULL, path TEXT NOT NULL, step INTEGER, tokens INTEGER, epoch REAL,
    duration REAL NOT NULL,         -- the duration it stands for, in the run's unit (epochs or tokens)
    PRIMARY KEY (run, name));
CREATE TABLE IF NOT EXISTS tasks (
    task TEXT NOT NULL, version TEXT NOT NULL, kind TEXT NOT NULL,
    role TEXT NOT NULL,             -- learning | forgetting | source_loss | other
    metric TEXT NOT NULL,           -- the headline metric
    PRIMARY KEY (task, version));
CREATE TABLE IF NOT EXISTS metrics (
    run TEXT NOT NULL, checkpoint TEXT NOT NULL, task TEXT NOT NULL, version TEXT NOT NULL, metric TEXT NOT NULL,
    value REAL, n INTEGER, stderr REAL, PRIMARY KEY (run, checkpoint, task, metric));
CREATE TABLE IF NOT EXISTS examples (
    run TEXT NOT NULL, checkpoint TEXT NOT NULL, task TEXT NOT NULL, metric TEXT NOT NULL,
    doc TEXT NOT NULL,              -- document (problem) id
    value REAL NOT NULL,            -- its value of the metric (pass@k: the problem's estimate)
    weight REAL NOT NULL,           -- 1, or its tokens for a token-weighted metric (loss, token_accuracy)
    PRIMARY KEY (run, checkpoint, task, metric, doc));
CREATE TABLE IF NOT EXISTS spectra (
    run TEXT NOT NULL, checkpoint TEXT NOT NULL, matrix TEXT NOT NULL, layer INTEGER, module TEXT,
    rows INTEGER, cols INTEGER, k50 INTEGER, k90 INTEGER, k99 INTEGER, k90_frac REAL, rel_change REAL,
    intruders INTEGER, stable_rank REAL, effective_rank REAL, fro REAL, k90_base INTEGER, k90_finetuned INTEGER,
    k90_gaussian INTEGER, lora_rank INTEGER,
    singular_values TEXT,           -- JSON {delta, base, finetuned} for the matrices kept whole, else NULL
    PRIMARY KEY (run, checkpoint, matrix));
CREATE TABLE IF NOT EXISTS analyses (
    run TEXT NOT NULL, checkpoint TEXT NOT NULL,
    kind TEXT NOT NULL,             -- kl | diversity:<task>
    value TEXT NOT NULL,            -- JSON
    PRIMARY KEY (run, checkpoint, kind));
CREATE TABLE IF NOT EXISTS curves (
    run TEXT NOT NULL, step INTEGER NOT NULL, tokens INTEGER,
    loss REAL,                      -- training loss of the step (mean per target token)
    eval_loss REAL,                 -- held-out loss, at the steps it was measured
    lr REAL, PRIMARY KEY (run, step));
CREATE TABLE IF NOT EXISTS notes (source TEXT NOT NULL, text TEXT NOT NULL, PRIMARY KEY (source, text));
"""
BASE = "(base)"  # runs.name of a setting's base model: "(base)/<setting>", its one checkpoint "base"
RUN_COLUMNS = ("name", "setting", "grp", "label", "method", "regime", "rank", "alpha", "targets", "variant", "lr",
               "weight_decay", "attention_dropout", "optimizer", "seed", "duration_unit", "config", "status",
               "reason", "wall_s", "tokens_per_s", "peak_memory_gb", "device", "trainable_params", "total_params",
               "updated")
SPECTRUM_COLUMNS = ("run", "checkpoint", "matrix", "layer", "module", "rows", "cols", "k50", "k90", "k99",
                    "k90_frac", "rel_change", "intruders", "stable_rank", "effective_rank", "fro", "k90_base",
                    "k90_finetuned", "k90_gaussian", "lora_rank", "singular_values")
VOLATILE = ("updated", "wall_s", "tokens_per_s", "peak_memory_gb", "device", "path")  # differ run to run


def base_run(setting: str) -> str:
    return f"{BASE}/{setting}"

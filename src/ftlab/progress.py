"""Progress of long work: a tqdm bar on a terminal, plain lines (at most every 30 s, and at the end) in a log; what
training a run costs (`CostMeter`: time, speed with and without saves, peak memory); and the libraries' own bars and
notices turned off for a process that shows ftlab's (`quiet_libraries`)."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

from tqdm import tqdm

from ftlab.io import read_json, write_json


class Progress:
    def __init__(self, total: int, initial: int = 0, unit: str = "step", every_s: float = 30.0):
        self.total, self.done, self.unit, self.every_s = total, initial, unit, every_s
        self.bar = tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True) if sys.stderr.isatty() else None
        self.start, self.start_done = time.perf_counter(), initial
        self.last_print = self.start

    def update(self, **stats: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix(stats, refresh=False)
            self.bar.update(1)
            return
        now = time.perf_counter()
        if now - self.last_print >= self.every_s or self.done == self.total:
            rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            shown = " ".join(f"{k} {v}" for k, v in stats.items())
            print(f"ftlab: {self.unit} {self.done}/{self.total} | {shown} | ETA {format_seconds(eta)}",
                  file=sys.stderr, flush=True)
            self.last_print = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_seconds(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class CostMeter:
    """What training a run costs, in <run>/run.json, summed over the sessions that trained it (each up to its last
    state save: a kill loses at most one resume interval of it):
        wall_s                      the whole session: setup (loading, compiling), training, evaluation and saves
        train_s, save_s, tokens     the training loop's time, the part of it spent saving states and checkpoints,
                                    and the tokens it trained on
        tokens_per_s_with_saves     tokens / train_s
        tokens_per_s_without_saves  tokens / (train_s - save_s): what the step computes (the metrics log's speed)
        peak_memory_gb              the device's peak (CUDA: the most allocated; CPU: the process's peak resident size
                                    during this run, which includes whatever else the process holds)
    and the device, the trainable and the total parameters."""

    KEYS = ("wall_s", "train_s", "save_s", "tokens")  # summed over sessions

    def __init__(self, path: Path, device, trainable: int, total: int):
        self.path, self.device, self.trainable, self.total = Path(path), device, trainable, total
        previous = read_json(self.path, "run cost") if self.path.exists() else {}
        self.before = {key: previous.get(key, 0) for key in self.KEYS}
        self.peak_before = previous.get("peak_memory_gb", 0.0)
        self.start = time.perf_counter()
        self.loop_start: float | None = None
        self.save_s, self.tokens = 0.0, 0
        if device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(device)
        else:
            _reset_peak_rss()  # a study trains many runs in one process: each run's own peak, not the process's

    def training(self) -> None:
        """The training loop starts now."""
        self.loop_start = time.perf_counter()

    def trained(self, tokens: int) -> None:
        self.tokens += tokens

    def saved(self, seconds: float) -> None:
        self.save_s += seconds

    def peak_memory_gb(self) -> float:
        if self.device.type == "cuda":
            import torch

            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return _peak_rss_kib() / 2**20

    def write(self) -> None:
        now = time.perf_counter()
        loop = now - self.loop_start if self.loop_start is not None else 0.0
        total = {"wall_s": self.before["wall_s"] + now - self.start, "train_s": self.before["train_s"] + loop,
                 "save_s": self.before["save_s"] + self.save_s, "tokens": self.before["tokens"] + self.tokens}
        computing = total["train_s"] - total["save_s"]
        write_json(self.path, {
            **{key: round(value, 3) for key, value in total.items() if key != "tokens"}, "tokens": total["tokens"],
            "tokens_per_s_with_saves": round(total["tokens"] / total["train_s"], 1) if total["train_s"] > 0 else None,
            "tokens_per_s_without_saves": round(total["tokens"] / computing, 1) if computing > 0 else None,
            "peak_memory_gb": round(max(self.peak_before, self.peak_memory_gb()), 4),
            "device": str(self.device), "trainable_params": self.trainable, "total_params": self.total})


PROC_STATUS, PROC_CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _reset_peak_rss() -> None:
    """Reset the process's peak resident size (Linux: writing 5 to clear_refs resets VmHWM); elsewhere a no-op,
    and _peak_rss_kib falls back to the process-lifetime peak."""
    try:
        PROC_CLEAR_REFS.write_text("5")
    except OSError:
        pass


def _peak_rss_kib() -> int:
    """The process's peak resident size in KiB since the last _reset_peak_rss (VmHWM), else over its lifetime."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def quiet_libraries() -> None:
    """Process-wide, so called by entry points only (ftlab.cli.main; a Ray worker's task), never at import: Hugging
    Face's progress bars off (ftlab's bar is the progress; a bar per file loaded or saved is noise), and hidden the
    FutureWarning that transformers 5 raises on every PEFT adapter load (PEFT still calls a deprecated name; nothing
    for a user to act on; the tests set the same filter in pyproject.toml)."""
    from transformers.utils import logging as hf_logging  # heavy: only for a process that runs models

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

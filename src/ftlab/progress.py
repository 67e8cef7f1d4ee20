"""Progress of long work: a tqdm bar on a terminal, plain lines (at most every 30 s, and at the end) in a log; and the
libraries' own bars and notices turned off for a process that shows ftlab's (`quiet_libraries`)."""

from __future__ import annotations

import sys
import time
import warnings

from tqdm import tqdm


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


def quiet_libraries() -> None:
    """Process-wide, so called by entry points only (ftlab.cli.main; a Ray worker's task), never at import: Hugging
    Face's progress bars off (ftlab's bar is the progress; a bar per file loaded or saved is noise), and hidden the
    FutureWarning that transformers 5 raises on every PEFT adapter load (PEFT still calls a deprecated name; nothing
    for a user to act on; the tests set the same filter in pyproject.toml)."""
    from transformers.utils import logging as hf_logging  # heavy: only for a process that runs models

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

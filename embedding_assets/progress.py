"""How fast a stage goes: throttled progress lines for the run log, and the throughput entries
every asset reports in its materialisation metadata under the same names."""

import resource
import time
from collections.abc import Callable, Iterable

import numpy as np

PROGRESS_INTERVAL_SECONDS = 15.0


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (Linux), such as "VmRSS" or "VmHWM", in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:")) / 1024


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB.

    VmHWM where /proc has it: on Linux ru_maxrss carries the parent's peak over through fork
    and exec, so a step started by a large process would report that process's memory.
    """
    try:
        return status_mib("VmHWM")
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def token_counts(tokenizer, texts: Iterable[str]) -> np.ndarray:
    """WordPiece tokens of each whole document (no special tokens, no truncation)."""
    encodings = tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
    return np.fromiter((len(encoding) for encoding in encodings), dtype=np.int64, count=len(encodings))


def throughput(seconds: float, documents: int, tokens: int | None = None) -> dict[str, float]:
    """`wall_seconds`, `docs_per_second` and, when the tokens are known, `tokens_per_second`."""
    seconds = max(seconds, 1e-9)
    entries = {"wall_seconds": round(seconds, 3), "docs_per_second": round(documents / seconds, 1)}
    if tokens is not None:
        entries["tokens_per_second"] = round(tokens / seconds, 1)
    return entries


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class ProgressLog:
    """Logs `done/total`, the rate and the ETA of long work: on the first update, then at most once
    every `interval` seconds, and on the last, so a long run's log stays readable."""

    def __init__(
        self,
        log: Callable[[str], None],
        what: str,
        total: int,
        unit: str = "documents",
        interval: float = PROGRESS_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._clock = clock
        self.what, self.total, self.unit, self.interval = what, total, unit, interval
        self.started = clock()
        self._last: float | None = None

    def update(self, done: int, detail: str = "") -> bool:
        """Record that `done` units are finished; returns whether a line was logged."""
        now = self._clock()
        finished = done >= self.total
        if not finished and self._last is not None and now - self._last < self.interval:
            return False
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        eta = "done" if finished else (f"ETA {format_duration((self.total - done) / rate)}" if rate > 0 else "ETA unknown")
        share = 100.0 * done / self.total if self.total else 100.0
        line = f"{self.what}: {done:,}/{self.total:,} {self.unit} ({share:.0f}%), {rate:,.1f} {self.unit}/s, {eta}"
        self._log(f"{line}; {detail}" if detail else line)
        self._last = now
        return True

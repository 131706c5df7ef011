"""How fast a stage goes: throttled progress lines for the run log, and the throughput entries
every asset reports in its materialisation metadata under the same names."""

import threading
import time
from collections.abc import Callable, Iterable

import numpy as np

PROGRESS_INTERVAL_SECONDS = 15.0


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (Linux), such as "VmRSS" or "VmHWM", in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:")) / 1024


class StepMemory:
    """Resident memory of one step, from `StepMemory.start()` at its top to `report()` at its end.

    The kernel's high-water mark (VmHWM) is the peak of the whole process: under the in-process
    executor it would carry the training step's peak into every later step. Writing 5 to
    /proc/self/clear_refs resets it to the current RSS, so VmHWM read at the end is the peak since
    the step began. Where that file cannot be written (not Linux, a locked-down /proc), a thread
    samples VmRSS every 20 ms instead and can miss a shorter spike. The RSS at the start is
    reported too: in a process shared by several steps it holds what the earlier ones left, and
    the peak less it is what this step added.
    """

    SAMPLE_SECONDS = 0.02
    CLEAR_REFS = "/proc/self/clear_refs"

    def __init__(self) -> None:
        self.rss_at_start = status_mib("VmRSS")
        self._peak = self.rss_at_start
        self._stop: threading.Event | None = None
        try:
            with open(self.CLEAR_REFS, "w") as f:
                f.write("5")
            self.method = "kernel high-water mark (VmHWM), reset at step start"
        except OSError:
            self.method = f"VmRSS sampled every {self.SAMPLE_SECONDS * 1000:.0f} ms"
            self._stop = threading.Event()
            threading.Thread(target=self._sample, name="step-memory", daemon=True).start()

    @classmethod
    def start(cls) -> "StepMemory":
        return cls()

    def _sample(self) -> None:
        while not self._stop.wait(self.SAMPLE_SECONDS):
            self._peak = max(self._peak, status_mib("VmRSS"))

    def peak(self) -> float:
        if self._stop is None:
            return status_mib("VmHWM")
        self._peak = max(self._peak, status_mib("VmRSS"))
        return self._peak

    def report(self) -> dict:
        """The step's metadata entries: its peak, the RSS it started from and how the peak was measured."""
        peak = self.peak()
        if self._stop is not None:
            self._stop.set()
        return {
            "peak_rss_mib": round(peak, 1),
            "rss_at_step_start_mib": round(self.rss_at_start, 1),
            "step_added_rss_mib": round(max(peak - self.rss_at_start, 0.0), 1),
            "peak_rss_method": self.method,
        }


def token_counts(tokenizer, texts: Iterable[str]) -> np.ndarray:
    """WordPiece tokens of each whole document (no special tokens, no truncation)."""
    encodings = tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
    return np.fromiter((len(encoding) for encoding in encodings), dtype=np.int64, count=len(encodings))


def throughput(seconds: float, documents: int, tokens: int | None = None) -> dict[str, float]:
    """`wall_seconds`, `docs_per_second`, the `documents_processed` it is the rate of and, when the
    tokens are known, `tokens_per_second`."""
    seconds = max(seconds, 1e-9)
    entries = {"wall_seconds": round(seconds, 3), "docs_per_second": round(documents / seconds, 1), "documents_processed": int(documents)}
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

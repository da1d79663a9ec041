"""Timing: warm-up then repeated measurement, and ratios measured in one run."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class Timing:
    """Seconds per call over `repeat` timed calls after warm-up."""
    samples: list = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    def percentile(self, q: float) -> float:
        s = sorted(self.samples)
        k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
        return s[k]

    @property
    def ms(self) -> float:
        return self.median * 1e3

    def __repr__(self) -> str:
        return f"Timing(median={self.ms:.3f} ms, n={len(self.samples)})"


def time_it(fn: Callable[[], object], repeat: int = 5, warmup: int = 1,
            sync: Optional[Callable[[], None]] = None) -> Timing:
    """Call fn `warmup` times untimed, then `repeat` times timed. `sync` (e.g.
    torch.cuda.synchronize) runs before each clock read so GPU work is counted."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    out = Timing()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        out.samples.append(time.perf_counter() - t0)
    return out


class Stopwatch:
    """with Stopwatch() as sw: ...; sw.seconds"""

    def __enter__(self):
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0
        return False

"""Interpreter settings for as long as the apply pipeline runs, restored when it stops.

Two CPython defaults cost the hot path dearly (measured on the end-to-end benchmark):
- the GIL is handed over after 5 ms: the stage threads wait on sockets many times per
  batch, and each wake-up would queue behind the decoding thread for up to that long
  (0.5 ms: ~10% faster);
- the cyclic GC looks at its youngest generation every 700 new containers, and what
  survives is scanned again in the older generations: with batches of row tuples in
  flight that is most of the decoding thread's time (every 20,000: ~12% faster; the C
  parts also leave the tuples they make, which can be in no cycle, untracked).
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass

SWITCH_INTERVAL_S = 0.0005
GC_YOUNG_THRESHOLD = 20_000


@dataclass(frozen=True)
class Settings:
    switch_interval: float
    gc_thresholds: tuple[int, int, int]

    def restore(self) -> None:
        sys.setswitchinterval(self.switch_interval)
        gc.set_threshold(*self.gc_thresholds)


def tune() -> Settings:
    """Apply the pipeline's settings (never lower a threshold someone raised, nor raise a
    switch interval someone lowered); returns the previous ones, to `restore`."""
    previous = Settings(sys.getswitchinterval(), gc.get_threshold())
    sys.setswitchinterval(min(previous.switch_interval, SWITCH_INTERVAL_S))
    young, *older = previous.gc_thresholds
    if young:  # 0: the cyclic GC is off, leave it so
        gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), *older)
    return previous

"""A streaming round's figures and the medians over rounds (pure: no database, no clock).

Each round pairs the baseline (`pg_recvlogical` reading a copy of the slot) with the
daemon reading another copy, run one after the other, so both see the machine in the
same state; ratios are taken per round and their median reported, every round listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any


@dataclass(frozen=True)
class Round:
    baseline_s: float  # pg_recvlogical, start to end position
    total_s: float  # the daemon, process start to every change in both targets
    startup_s: float  # the daemon, process start to the first change read

    def __post_init__(self) -> None:
        if not 0 <= self.startup_s < self.total_s or self.baseline_s <= 0:
            raise ValueError(f"a round needs 0 <= start-up < total and a baseline: {self}")

    @property
    def streaming_s(self) -> float:
        """The daemon's time without its start-up."""
        return self.total_s - self.startup_s

    @property
    def ratio(self) -> float:
        """Throughput relative to the baseline, start-up included."""
        return self.baseline_s / self.total_s

    @property
    def ratio_streaming(self) -> float:
        """Throughput relative to the baseline, start-up excluded."""
        return self.baseline_s / self.streaming_s


def summarise(changes: int, rounds: Sequence[Round]) -> dict[str, Any]:
    """Medians over `rounds` of changes/s and of each round's ratios, and every round."""
    if not rounds:
        raise ValueError("no rounds to summarise")

    def med(values: list[float], digits: int = 3) -> float:
        return round(median(values), digits)

    return {
        "changes": changes,
        "rounds": len(rounds),
        "pg_recvlogical_changes_per_s": round(median(changes / r.baseline_s for r in rounds)),
        "daemon_changes_per_s": round(median(changes / r.total_s for r in rounds)),
        "daemon_streaming_changes_per_s": round(median(changes / r.streaming_s for r in rounds)),
        "startup_s": med([r.startup_s for r in rounds], 2),
        "ratio": med([r.ratio for r in rounds]),
        "ratio_without_startup": med([r.ratio_streaming for r in rounds]),
        "every_round": [
            {
                "pg_recvlogical_s": round(r.baseline_s, 2),
                "daemon_s": round(r.total_s, 2),
                "startup_s": round(r.startup_s, 2),
                "ratio": round(r.ratio, 3),
                "ratio_without_startup": round(r.ratio_streaming, 3),
            }
            for r in rounds
        ],
    }


def per_change_us(seconds: dict[str, float], changes: int) -> dict[str, float]:
    """CPU seconds per component -> µs per change."""
    return {name: round(s * 1e6 / changes, 2) for name, s in seconds.items()}


def median_per_key(samples: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per key, the median over the samples that have it (in the first-seen key order)."""
    keys = list(dict.fromkeys(k for sample in samples for k in sample))
    return {k: round(median(s[k] for s in samples if k in s), 2) for k in keys}

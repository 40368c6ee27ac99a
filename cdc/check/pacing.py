"""How the drift monitor paces a pass: pure arithmetic, no clock or database.

A pass is spread over `monitor_interval_s` and never reads more than `monitor_rows_per_s`
source rows a second; a step reads a few seconds of that budget, and costs at least
`STEP_COST_ROWS` (its snapshot) however few rows it read.
"""

from __future__ import annotations

from typing import Final

from cdc.check.keyrange import LEAF_ROWS

STEP_SECONDS: Final = 10.0  # a step reads about this many seconds of the row budget
MAX_STEP_ROWS: Final = 100_000
STEP_COST_ROWS: Final = 1_000  # a step's fixed cost (a snapshot), counted as this many rows


def step_rows(rows_per_s: int) -> int:
    """Source rows per step: a few seconds of the budget, bounded."""
    return max(LEAF_ROWS, min(MAX_STEP_ROWS, int(rows_per_s * STEP_SECONDS)))


def step_due(
    pass_started: float, rows_done: int, rows_expected: int, interval_s: float, rows_per_s: int
) -> float:
    """When the next step of a pass may start: the pass's rows spread evenly over the
    interval, and never faster than the budget. Once more rows were read than expected (a
    stale estimate), only the budget paces."""
    spread = interval_s * rows_done / rows_expected if rows_done < rows_expected else 0.0
    return pass_started + max(spread, rows_done / rows_per_s)


def paced_rows(rows: int) -> int:
    return max(rows, STEP_COST_ROWS)

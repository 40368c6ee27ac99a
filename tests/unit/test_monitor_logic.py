"""The drift monitor's pure parts: pacing, confirming a re-read, summaries, and what both
targets hold (position and freshness)."""

from __future__ import annotations

import math
import threading
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from cdc.check.drift import DiffKind, KeyDiff, SourceRow, Target
from cdc.check.keyrange import LEAF_ROWS, KeyRange
from cdc.check.monitor import drift_summary
from cdc.check.pacing import MAX_STEP_ROWS, step_due, step_rows
from cdc.check.position import TargetPosition, heartbeat_time
from cdc.check.rangecheck import RangeCheck, confirmed
from cdc.check.sourceread import Run, SourceRead
from cdc.protocol import datetime_to_pg_timestamp
from cdc.protocol.lsn import Lsn


def diff(
    target: Target, key: str, kind: DiffKind = DiffKind.CHANGED, newer: bool = False
) -> KeyDiff:
    return KeyDiff(target, kind, (key,), (key,), newer)


# -- the source read, kept ------------------------------------------------------------------


def source_read(lower: int | None, hashes: list[int], upper: int | None) -> SourceRead:
    keys = [f"{k:06d}" for k in range(len(hashes))]
    rows = [(f"c{k}", k, h, -h) for k, h in zip(keys, hashes, strict=True)]
    bound = None if lower is None else (f"{lower:06d}",)
    return SourceRead(KeyRange(bound, None if upper is None else (f"{upper:06d}",)), 1, rows)


@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3_000), st.booleans())
def test_pieces_cover_their_run_and_their_fingerprints_add_up(
    hashes: list[int], to_the_end: bool
) -> None:
    read = source_read(None, hashes, None if to_the_end else len(hashes) + 5)
    whole = read.whole()
    assert read.aggregate(whole) == (len(hashes), sum(hashes), -sum(hashes))
    runs = [whole]
    while runs:
        run = runs.pop()
        if read.is_leaf(run):
            assert run.rows <= LEAF_ROWS
            assert read.leaf_rows(run) == {
                (f"c{k:06d}",): SourceRow((f"{k:06d}",), (hashes[k], -hashes[k]))
                for k in range(run.start, run.stop)
            }
            continue
        pieces = read.split(run)
        # Adjacent, from the run's lower bound to its upper: no key of the run falls
        # between two pieces, nor outside them.
        assert pieces[0].range.lower == run.range.lower
        assert pieces[-1].range.upper == run.range.upper
        assert [p.start for p in pieces[1:]] == [p.stop for p in pieces[:-1]]
        assert (pieces[0].start, pieces[-1].stop) == (run.start, run.stop)
        for before, after in pairwise(pieces):
            assert before.range.upper == after.range.lower == read.key(before.stop - 1)
        assert sum(read.aggregate(p)[1] for p in pieces) == read.aggregate(run)[1]
        assert len(pieces) > 1 and all(p.rows < run.rows for p in pieces)
        runs += pieces


@given(
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=500),
    st.data(),
)
def test_keys_changed_since_the_read_are_left_out_of_its_fingerprint(
    hashes: list[int], data: st.DataObject
) -> None:
    read = source_read(None, hashes, None)
    start = data.draw(st.integers(0, len(hashes)))
    run = Run(KeyRange(None, None), start, data.draw(st.integers(start, len(hashes))))
    left_out = data.draw(st.sets(st.integers(0, len(hashes) + 10)))
    # Keys the source does not hold (inserted since) are ignored.
    idents = [(f"c{k:06d}",) for k in sorted(left_out)]
    kept = [k for k in range(run.start, run.stop) if k not in left_out]
    assert read.aggregate_without(run, idents, 1) == (len(kept), sum(hashes[k] for k in kept))
    assert read.aggregate_without(run, idents, 2) == (len(kept), -sum(hashes[k] for k in kept))
    assert read.aggregate_without(run, [], 1) == read.aggregate(run)[:2]


def test_an_empty_read_is_one_leaf_over_its_whole_range() -> None:
    read = source_read(7, [], None)
    assert read.whole() == Run(KeyRange(("000007",), None), 0, 0)
    assert read.is_leaf(read.whole()) and read.aggregate(read.whole()) == (0, 0, 0)


# -- pacing ---------------------------------------------------------------------------------


def test_step_rows_is_a_few_seconds_of_the_budget_within_bounds() -> None:
    assert step_rows(1_000) == 10_000
    assert step_rows(100) == 1_000
    assert step_rows(1) == LEAF_ROWS
    assert step_rows(10**9) == MAX_STEP_ROWS


def test_a_pass_is_spread_over_the_interval() -> None:
    # 1,000 rows expected over 100 s: after 250 rows the next step waits until 25 s.
    assert step_due(0.0, 250, 1_000, 100.0, 1_000_000) == 25.0
    assert step_due(10.0, 0, 1_000, 100.0, 1_000_000) == 10.0


def test_the_budget_caps_the_pace() -> None:
    # 1,000,000 rows in 100 s would be 10,000 rows/s; the budget says 1,000.
    assert step_due(0.0, 50_000, 1_000_000, 100.0, 1_000) == 50.0


def test_a_stale_estimate_falls_back_to_the_budget() -> None:
    assert step_due(0.0, 2_000, 1_000, 100.0, 1_000) == 2.0


@given(
    st.integers(0, 10**7), st.integers(0, 10**7), st.integers(1, 10**7),
    st.floats(0.1, 10_000), st.integers(1, 10**6),
)  # fmt: skip
def test_more_rows_never_make_the_next_step_due_sooner_within_an_estimate(
    done: int, more: int, expected: int, interval: float, budget: int
) -> None:
    later = done + more
    if later < expected:
        assert step_due(0.0, later, expected, interval, budget) >= step_due(
            0.0, done, expected, interval, budget
        )
    assert step_due(0.0, done, expected, interval, budget) >= done / budget


# -- confirming and summarising -------------------------------------------------------------


def test_only_keys_that_differ_in_both_reads_are_drift() -> None:
    first = [diff(Target.HISTORIC, "1"), diff(Target.HISTORIC, "2"), diff(Target.CLICKHOUSE, "3")]
    second = [
        diff(Target.HISTORIC, "1"),  # again: drift
        diff(Target.CLICKHOUSE, "2"),  # another target than before: not confirmed
        diff(Target.CLICKHOUSE, "3", newer=True),  # changed since: not comparable now
        diff(Target.HISTORIC, "4"),  # new in the re-read: not confirmed
    ]
    assert confirmed(first, second) == [diff(Target.HISTORIC, "1")]


def test_differences_in_flight_at_the_first_read_confirm_nothing() -> None:
    assert confirmed([diff(Target.HISTORIC, "1", newer=True)], [diff(Target.HISTORIC, "1")]) == []


def test_drift_summary_names_at_most_five_keys_per_target_and_kind() -> None:
    diffs = [diff(Target.HISTORIC, str(k), DiffKind.MISSING) for k in range(7)]
    diffs.append(diff(Target.CLICKHOUSE, "9", DiffKind.EXTRA))
    assert drift_summary(diffs) == [
        {"target": "clickhouse", "kind": "extra", "rows": 1, "keys": ["(9)"]},
        {"target": "historic", "kind": "missing", "rows": 7,
         "keys": ["(0)", "(1)", "(2)", "(3)", "(4)"]},
    ]  # fmt: skip


def test_range_check_lists_its_drift() -> None:
    leaf = KeyRange(("1",), ("9",))
    check = RangeCheck(None, 9, True, drift={leaf: [diff(Target.HISTORIC, "5")]})
    assert check.diffs == [diff(Target.HISTORIC, "5")]


# -- what both targets hold -----------------------------------------------------------------


def test_heartbeat_content_is_the_source_clock() -> None:
    assert heartbeat_time(b"2026-01-02 03:04:05.5+00") == 1767323045.5
    assert heartbeat_time(b"not a time") is None
    assert heartbeat_time(b"\xff") is None


def pg_time(unix: float) -> int:
    from datetime import UTC, datetime

    return datetime_to_pg_timestamp(datetime.fromtimestamp(unix, UTC))


def test_freshness_follows_applied_commits() -> None:
    now = [1_000.0]
    position = TargetPosition(clock=lambda: now[0])
    assert math.isnan(position.freshness())
    position.applied(Lsn(100), pg_time(990.0))
    assert position.freshness() == 10.0
    position.applied(Lsn(90), pg_time(980.0))  # an older batch never moves it back
    assert position.freshness() == 10.0 and position.lsn == Lsn(100)
    now[0] = 1_005.0
    assert position.freshness() == 15.0


def test_a_heartbeat_counts_once_what_came_before_it_is_durable() -> None:
    now = [1_000.0]
    position = TargetPosition(clock=lambda: now[0])
    position.applied(Lsn(100), pg_time(900.0))
    position.heartbeat(Lsn(500), Lsn(300), b"1970-01-01 00:16:38+00")  # 998 s
    position.flushed(Lsn(200), durable=Lsn(200))  # a transaction before it is not durable
    assert position.lsn == Lsn(200) and position.freshness() == 100.0
    position.flushed(Lsn(300), durable=Lsn(300))
    assert position.lsn == Lsn(500) and position.freshness() == 2.0


def test_wait_past_returns_when_the_position_is_reached_or_given_up() -> None:
    position = TargetPosition()
    assert position.wait_past(Lsn.ZERO, 0.0, lambda: False)
    assert not position.wait_past(Lsn(10), 0.0, lambda: False)
    assert not position.wait_past(Lsn(10), 60.0, lambda: True)
    waiter = threading.Thread(target=lambda: position.applied(Lsn(10), None))
    result: list[bool] = []
    done = threading.Thread(
        target=lambda: result.append(position.wait_past(Lsn(10), 60.0, lambda: False))
    )
    done.start()
    waiter.start()
    waiter.join()
    done.join()
    assert result == [True]

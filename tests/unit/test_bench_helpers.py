"""Unit tests of the streaming benchmark's pure parts: the realistic workload's parameters,
the per-round ratios and their medians, and the reading of /proc stat lines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import cpu, rounds, workloads
from bench.workloads import Mix

pytestmark = pytest.mark.unit


@given(
    st.integers(min_value=0, max_value=5_000_000),
    st.floats(min_value=0, max_value=0.5),
    st.floats(min_value=0, max_value=0.5),
)
def test_transaction_sizes_make_exactly_the_changes_asked(
    changes: int, single: float, ten: float
) -> None:
    sizes = Mix(single_share=single, ten_share=ten).transactions(changes)
    assert set(sizes) == {1, 10, 1000}
    assert all(count >= 0 for count in sizes.values())
    assert sum(size * count for size, count in sizes.items()) == changes


def test_default_mix_puts_a_tenth_of_changes_in_single_change_transactions() -> None:
    assert Mix().transactions(1_000_000) == {1: 100_000, 10: 20_000, 1000: 700}


def test_call_arguments_follow_the_procedure_signature() -> None:
    mix = Mix(seed=0.5, hot_keys=7, wide_bytes=100)
    assert mix.call_arguments(20_000) == (0.5, 2_000, 400, 14, 0.6, 0.3, 7, 0.2, 0.1, 100)
    call, args = workloads.REALISTIC.call(20_000)
    assert call.count("%s") == len(args) == 10
    assert workloads.FRIENDLY.call(10_000) == ("CALL director.load(%s)", (10_000,))


@pytest.mark.parametrize(
    "bad",
    [
        {"insert_share": 1.2},
        {"insert_share": 0.8, "update_share": 0.3},
        {"single_share": 0.6, "ten_share": 0.6},
        {"seed": 2.0},
        {"hot_keys": 0},
    ],
)
def test_mix_refuses_impossible_parameters(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Mix(**bad)  # type: ignore[arg-type]


def test_negative_changes_refused() -> None:
    with pytest.raises(ValueError):
        Mix().transactions(-1)


def test_round_ratios_with_and_without_startup() -> None:
    r = rounds.Round(baseline_s=2.0, total_s=5.0, startup_s=1.0)
    assert r.ratio == pytest.approx(0.4)
    assert r.ratio_streaming == pytest.approx(0.5)
    with pytest.raises(ValueError):
        rounds.Round(baseline_s=2.0, total_s=1.0, startup_s=1.0)


def test_summary_takes_medians_of_per_round_ratios_and_lists_every_round() -> None:
    measured = [
        rounds.Round(1.0, 4.0, 1.0),  # 0.25, 0.333
        rounds.Round(1.0, 2.0, 0.5),  # 0.5, 0.667
        rounds.Round(2.0, 5.0, 1.0),  # 0.4, 0.5
    ]
    summary = rounds.summarise(1_000, measured)
    assert summary["ratio"] == 0.4
    assert summary["ratio_without_startup"] == 0.5
    assert summary["startup_s"] == 1.0
    assert summary["pg_recvlogical_changes_per_s"] == 1_000
    assert [row["ratio"] for row in summary["every_round"]] == [0.25, 0.5, 0.4]
    with pytest.raises(ValueError):
        rounds.summarise(1_000, [])


def test_median_per_key_keeps_keys_missing_from_some_samples() -> None:
    assert rounds.median_per_key([{"a": 1.0, "b": 4.0}, {"a": 3.0}, {"a": 2.0}]) == {
        "a": 2.0,
        "b": 4.0,
    }
    assert rounds.per_change_us({"x": 0.5}, 100_000) == {"x": 5.0}


def test_stat_line_with_parentheses_and_spaces_in_the_name() -> None:
    line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 8 0 9 1 2"
    assert cpu.parse_stat(line) == cpu.Stat("a (b) c", 281)
    with pytest.raises(ValueError):
        cpu.parse_stat("4242 (short) S 1 2")
    with pytest.raises(ValueError):
        cpu.parse_stat("not a stat line")


@pytest.mark.parametrize(
    ("title", "role"),
    [
        ("postgres: walsender postgres 127.0.0.1(51844) START_REPLICATION", "walsender"),
        ("postgres: postgres postgres 127.0.0.1(34080) COPY", "backend"),
        ("postgres: checkpointer", "checkpointer"),
        ("postgres: autovacuum worker director", "autovacuum worker"),
        ("postgres: logical replication launcher", "logical replication"),
    ],
)
def test_postgres_roles_from_process_titles(title: str, role: str) -> None:
    assert cpu.postgres_role(title) == role


def test_used_seconds_counts_new_processes_from_zero() -> None:
    used = cpu.used_seconds({1: 100}, {1: 150, 2: 20})
    assert used == {1: 50 / cpu.TICKS_PER_S, 2: 20 / cpu.TICKS_PER_S}

"""The shared row text: what both targets read back must be exactly the rows' values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.apply import rowtext
from cdc.apply.batch import RowImage, TableBatch, commit_time_text
from cdc.apply.rowtext import row_text, shared_row_text
from cdc.errors import CdcError, ErrorKind
from cdc.load.copytext import parse_row
from cdc.protocol import (
    UNCHANGED_TOAST,
    BinaryDatum,
    Relation,
    RelationColumn,
    TupleValue,
    pg_timestamp_to_datetime,
)
from cdc.protocol.tags import ReplicaIdentity
from tests.unit.test_batch import schema_of

pytestmark = pytest.mark.unit

WIDTH = 4
RELATION = Relation(
    None, 1, "s", "t", ReplicaIdentity.DEFAULT,
    tuple(RelationColumn(i == 0, f"c{i}", 25, -1) for i in range(WIDTH)),
)  # fmt: skip
# Text values, biased towards the bytes COPY text must escape.
TEXT = st.binary(max_size=12) | st.sampled_from([b"", b"\\", b"\t", b"\n", b"\r", b"a\\Nb", b"\\N"])
VALUE: st.SearchStrategy[TupleValue] = TEXT | st.none() | st.just(UNCHANGED_TOAST)
ROW = st.tuples(st.integers(0, 2**100), st.booleans(), st.lists(VALUE, min_size=WIDTH - 1,
                max_size=WIDTH - 1))  # fmt: skip


def table_of(rows: list[tuple[int, bool, list[TupleValue]]]) -> TableBatch:
    table = TableBatch(schema_of(RELATION, (0,)))
    for key, (version, deleted, rest) in enumerate(rows):
        values = (b"%d" % key, *rest)
        table.rows[(values[0],)] = RowImage(version, deleted, values)
        if version >> 64 & 1:  # the others: a commit time the batch does not know (NULL)
            table.commit_times[version >> 64] = commit_time_text(version >> 64)
    return table


@settings(max_examples=300, deadline=None)
@given(st.lists(ROW, max_size=30))
def test_every_line_reads_back_as_its_row(rows: list[tuple[int, bool, list[TupleValue]]]) -> None:
    table = table_of(rows)
    text = row_text(table)
    complete = [k for k, image in table.rows.items() if UNCHANGED_TOAST not in image.values]
    assert sorted(text.incomplete) == sorted(set(table.rows) - set(complete))
    assert len(text.lines) == len(text.images) == len(complete)
    for line, image in zip(text.lines, text.images, strict=True):
        assert line.endswith(b"\n") and line.count(b"\n") == 1, "one line per row"
        *values, version, deleted, commit_time = parse_row(line[:-1], WIDTH + 3)
        assert tuple(values) == image.values
        assert version == b"%d" % image.version
        assert deleted == (b"1" if image.deleted else b"0")
        assert commit_time == table.commit_times.get(image.version >> 64)


@settings(max_examples=300, deadline=None)
@given(st.lists(ROW, max_size=30))
def test_the_c_lines_are_the_python_lines(rows: list[tuple[int, bool, list[TupleValue]]]) -> None:
    assert rowtext._row_lines is not None, "cdc.apply._rowtext is not built: run `make install`"
    table = table_of(rows)
    made = rowtext._text_of(table, table.rows.items())
    assert made == rowtext._text_of(table, table.rows.items(), native=False)


def test_a_value_of_another_kind_is_refused_by_both() -> None:
    table = table_of(
        [(1, False, [b"x", b"y", b"z"]), (2, False, [BinaryDatum(b"\x01"), None, b"z"])]
    )
    for native in (True, False):
        with pytest.raises(CdcError) as raised:
            rowtext._text_of(table, table.rows.items(), native=native)
        assert raised.value.kind is ErrorKind.DECODE


def test_the_text_is_made_once_per_table_batch() -> None:
    table = table_of([(1, False, [b"x", b"y", b"z"])])
    assert shared_row_text(table) is shared_row_text(table)


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2**40) * 10**6 // 2**10, 2**48))
def test_commit_time_text_is_utc_to_the_microsecond(commit_ts: int) -> None:
    expected = pg_timestamp_to_datetime(commit_ts).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    assert commit_time_text(commit_ts) == expected.encode()

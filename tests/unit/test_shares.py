"""A completed table batch dealt out to the historic writers (`cdc.sinks.historic.shares`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.apply.batch import commit_time_text
from cdc.apply.rowtext import row_text
from cdc.sinks.historic.shares import shares
from tests.unit.test_rowtext import table_of

pytestmark = pytest.mark.unit

TIME = commit_time_text(86_400_000_000)  # a day after 2000-01-01


def test_rows_are_set_apart_by_what_the_writer_does_with_them() -> None:
    kept_version = 7 | 1 << 64  # committed at LSN 1, whose time the batch holds
    table = table_of([
        (5, False, [b"a", None, b"b"]), (3, False, [b"c", b"d", b"e"]),
        (kept_version, True, [b'q"', b"r", b"s"]), (9, True, [b"t", b"u", b"v"]),
    ])  # fmt: skip
    first, kept = (b"0",), (b"2",)
    table.rows[first] = table.rows[first]._replace(inserted=True)
    table.commit_times[0] = TIME
    text = row_text(table)
    [share] = shares(table.schema, text, {id(table.rows[kept])}, 1)
    assert share.inserted == [b"0\ta\t\\N\tb\t5\t0\t" + TIME + b"\n"]
    assert share.lowest == 5
    assert share.others == [
        b"1\tc\td\te\t3\t0\t" + TIME + b"\n",
        b"3\tt\tu\tv\t9\t1\t" + TIME + b"\n",  # a tombstone whose values are not in historic
    ]
    kept_time = commit_time_text(1).decode()
    assert share.tombstones == ['{"2"}', f'{{"{kept_version}"}}', f'{{"{kept_time}"}}']


@given(
    st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), max_size=40),
    st.integers(1, 4),
)
def test_every_row_is_in_one_share(kinds: list[tuple[bool, bool, bool]], count: int) -> None:
    table = table_of([(n, deleted, [b"x", b"y", b"z"]) for n, (deleted, _, _) in enumerate(kinds)])
    for key, (_, inserted, _) in zip(list(table.rows), kinds, strict=True):
        table.rows[key] = table.rows[key]._replace(inserted=inserted)
    kept = {id(image) for image, (_, _, k) in zip(table.rows.values(), kinds, strict=True) if k}
    text = row_text(table)
    made = shares(table.schema, text, kept, count)
    assert len(made) == count
    lines = [line for s in made for line in (*s.inserted, *s.others)]
    marked = sum(len(s.tombstones[-2].split(",")) for s in made if s.tombstones)
    expected_kept = [i for i in text.images if i.deleted and id(i) in kept]
    assert len(lines) + marked == len(text.lines)
    assert marked == len(expected_kept)
    assert sorted(lines) == sorted(
        line for line, i in zip(text.lines, text.images, strict=True) if i not in expected_kept
    )
    for s in made:
        versions = [int(line.split(b"\t")[4]) for line in s.inserted]
        assert s.lowest == (min(versions) if versions else None)

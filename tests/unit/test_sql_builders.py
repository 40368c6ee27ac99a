"""The guards the SQL builders put into every write: the upsert's version guard, the
truncate watermark, the probe for a fill's rows, and a backfill chunk's key bounds (lower
exclusive, upper inclusive, so consecutive chunks neither overlap nor leave a gap)."""

from __future__ import annotations

import pytest

from cdc.load import chunks
from cdc.sinks.historic import sql as historic_sql
from tests.unit.test_ddl import TABLE

WATERMARK = (
    '"_version" > coalesce((SELECT version FROM "historic"."_cdc_truncations" '
    "WHERE table_name = 'Score Card'), 0)"
)


def test_upsert_replaces_a_row_only_by_a_newer_version() -> None:
    text = historic_sql.upsert_sql("historic", TABLE, "_cdc_stage").as_string(None)
    assert text.startswith('INSERT INTO "historic"."Score Card" AS t (')
    assert 'ON CONFLICT ("id", "Order") DO UPDATE SET' in text
    assert text.endswith('WHERE t."_version" < excluded."_version"')
    # The key is never updated; every other column, the version and the tombstone flag are.
    assert 'SET ("it\'s", "ünï`\\", "select", "_version", "_is_deleted", "_commit_time")' in text


def test_upsert_writes_nothing_at_or_below_the_truncate_watermark() -> None:
    text = historic_sql.upsert_sql("historic", TABLE, "_cdc_stage").as_string(None)
    assert WATERMARK in text


def test_upsert_takes_rows_in_key_order() -> None:
    """Two writers meeting on keys lock them in the same order (no deadlock)."""
    text = historic_sql.upsert_sql("historic", TABLE, "_cdc_stage").as_string(None)
    assert 'ORDER BY "_cdc_stage"."id", "_cdc_stage"."Order" ON CONFLICT' in text


def test_a_backfill_copy_is_guarded_like_the_stream() -> None:
    text = historic_sql.copy_within_sql("historic", TABLE, historic_sql.ALL_ROWS, 42 << 64)
    rendered = text.as_string(None)
    assert f"{42 << 64}::numeric" in rendered
    assert f"{42 << 64} > coalesce(" in rendered
    assert rendered.endswith('WHERE t."_version" < excluded."_version"')
    plain = historic_sql.copy_within_sql(
        "historic", TABLE, historic_sql.ALL_ROWS, 42 << 64, upsert=False
    ).as_string(None)
    assert "ON CONFLICT" not in plain


def test_truncate_deletes_below_its_version_and_only_raises_the_watermark() -> None:
    delete, watermark = (s.as_string(None) for s in historic_sql.truncate_sql("historic", "t"))
    assert delete == 'DELETE FROM "historic"."t" WHERE "_version" < %(version)s'
    assert watermark.endswith(
        "ON CONFLICT (table_name) DO UPDATE SET version = greatest(w.version, excluded.version)"
    )


def test_donors_are_probed_by_key_cast_to_its_type_in_key_order() -> None:
    text = historic_sql.donors_sql("historic", TABLE).as_string(None)
    assert text == (
        'SELECT k."_cdc_position", h."_version"::text, '
        'convert_to(h."id"::text, pg_client_encoding()), '
        'convert_to(h."Order"::text, pg_client_encoding()), '
        'convert_to(h."it\'s"::text, pg_client_encoding()), '
        'convert_to(h."ünï`\\"::text, pg_client_encoding()), '
        'convert_to(h."select"::text, pg_client_encoding()) '
        "FROM (SELECT * FROM unnest(%s::text[], %s::text[]) "
        'WITH ORDINALITY AS u("_cdc_key_0", "_cdc_key_1", "_cdc_position") '
        'ORDER BY CAST(u."_cdc_key_0" AS bigint), CAST(u."_cdc_key_1" AS integer)) AS k '
        'JOIN "historic"."Score Card" AS h ON h."id" = CAST(k."_cdc_key_0" AS bigint) '
        'AND h."Order" = CAST(k."_cdc_key_1" AS integer)'
    )


def test_chunk_bounds_are_lower_exclusive_upper_inclusive() -> None:
    chunk = chunks.Chunk("Score Card", 1, ["1", "2"], ["3", "4"])
    assert chunks.chunk_filter(TABLE, chunk, None).as_string(None) == (
        "ROW(\"id\", \"Order\") > ROW('1'::bigint, '2'::integer) AND "
        "ROW(\"id\", \"Order\") <= ROW('3'::bigint, '4'::integer)"
    )


def test_open_chunks_and_an_operator_predicate() -> None:
    everything = chunks.Chunk("Score Card", 0, None, None)
    assert chunks.chunk_filter(TABLE, everything, None).as_string(None) == "true"
    last = chunks.Chunk("Score Card", 9, ["3", "4"], None)
    assert chunks.chunk_filter(TABLE, last, "x > 1").as_string(None) == (
        "ROW(\"id\", \"Order\") > ROW('3'::bigint, '4'::integer) AND (x > 1)"
    )


def test_the_next_boundary_is_the_chunk_size_th_key_after_the_last() -> None:
    text = chunks.next_boundary_sql(TABLE, ["1", "2"], 100, None).as_string(None)
    assert text == (
        'SELECT ARRAY["id"::text, "Order"::text] FROM (SELECT "id", "Order" FROM '
        'ONLY "director"."Score Card" WHERE ROW("id", "Order") > ROW(\'1\'::bigint, '
        '\'2\'::integer) ORDER BY "id", "Order" OFFSET 99 LIMIT 1) bound'
    )


def test_array_literal_joins_text_values_and_escapes_only_where_needed() -> None:
    literal = historic_sql.array_literal
    assert literal([]) == "{}"
    assert literal([b"1", b"22", b"x y"]) == '{"1","22","x y"}'
    assert literal([b"a", None]) == '{"a",NULL}'
    assert literal([b'q"uote', b"back\\slash", b"", b"NULL"]) == (
        '{"q\\"uote","back\\\\slash","","NULL"}'
    )
    assert literal(["é".encode()]) == '{"é"}'
    with pytest.raises(ValueError, match="not text"):
        literal([b"1", 2])  # type: ignore[list-item]

"""`cdc verify` without a database: hash and range SQL, range splitting, classification, report."""

from __future__ import annotations

import pytest
from psycopg import sql

from cdc.check import drift, keyrange, rangequery, rowhash
from cdc.check.drift import DiffKind, Ident, KeyDiff, SourceRow, TableResult, Target, TargetRow
from cdc.check.keyrange import KeyRange
from cdc.check.rowhash import Form
from cdc.schema import Column, TableSchema, TypeKind
from cdc.sinks.clickhouse.types import PgType

TEXT, BPCHAR, JSONB, INTERVAL, INT4_ARRAY = 25, 1042, 3802, 1186, 1007


def column(
    name: str,
    oid: int,
    pg_type: str,
    nullable: bool = True,
    kind: TypeKind = TypeKind.BASE,
    element: Column | None = None,
    base_type: Column | None = None,
) -> Column:
    return Column(name, oid, -1, pg_type, nullable, kind, element, base_type)


INT = column("id", PgType.INT4, "integer", nullable=False)
NAME = column("it's `odd`", TEXT, "text")
TAGS = column(
    "tags",
    INT4_ARRAY,
    "integer[]",
    kind=TypeKind.ARRAY,
    element=column("tags", PgType.INT4, "integer"),
)
MOOD = column("mood", 99_001, "director.mood", kind=TypeKind.ENUM)
TABLE = TableSchema("director", "Score Card", (INT, NAME, TAGS), ("id",), "d")
PAIR = TableSchema(
    "director",
    "pairs",
    (
        column("team", TEXT, "text", nullable=False),
        INT,
        column("at", PgType.TIMESTAMPTZ, "timestamp with time zone"),
    ),
    ("team", "id"),
    "d",
)


def text(composable: sql.Composable) -> str:
    return composable.as_string(None)


# -- forms and canonical texts ------------------------------------------------------------


@pytest.mark.parametrize(
    ("col", "form"),
    [
        (INT, Form.INTEGER),
        (column("n", PgType.NUMERIC, "numeric(12,2)"), Form.NUMERIC),
        (column("f", PgType.FLOAT8, "double precision"), Form.FLOAT8),
        (column("r", PgType.FLOAT4, "real"), Form.FLOAT4),
        (column("b", PgType.BOOL, "boolean"), Form.BOOL),
        (column("u", PgType.UUID, "uuid"), Form.UUID),
        (column("d", PgType.DATE, "date"), Form.DATE),
        (column("t", PgType.TIMESTAMP, "timestamp without time zone"), Form.TIMESTAMP),
        (column("t", PgType.TIMESTAMPTZ, "timestamp with time zone"), Form.TIMESTAMP),
        (column("raw", PgType.BYTEA, "bytea"), Form.BYTEA),
        (column("j", JSONB, "jsonb"), Form.TEXT),
        (column("i", INTERVAL, "interval"), Form.TEXT),
        (MOOD, Form.TEXT),
        (TAGS, Form.ARRAY),
        (
            column(
                "money",
                99_002,
                "director.cents",
                kind=TypeKind.DOMAIN,
                base_type=column("money", PgType.NUMERIC, "numeric"),
            ),
            Form.NUMERIC,
        ),
    ],
)
def test_forms(col: Column, form: Form) -> None:
    assert rowhash.form_of(col) is form
    held_otherwise = form in (Form.ARRAY, Form.DATE, Form.TIMESTAMP)  # [] for NULL; infinities
    assert rowhash.held_differently([col]) is held_otherwise


def test_canonical_texts_per_engine() -> None:
    numeric = column("n", PgType.NUMERIC, "numeric")
    assert text(rowhash.pg_text(numeric)) == 'trim_scale("n")::text'
    assert rowhash.ch_text(numeric) == "toString(assumeNotNull(`n`))"
    moment = column("at", PgType.TIMESTAMPTZ, "timestamp with time zone")
    assert text(rowhash.pg_text(moment)) == 'trim_scale(extract(epoch FROM "at") * 1000000)::text'
    assert rowhash.ch_text(moment) == "toString(toUnixTimestamp64Micro(assumeNotNull(`at`)))"
    score = column("score", PgType.FLOAT8, "double precision")
    assert "encode(float8send(\"score\"::float8), 'hex')" in text(rowhash.pg_text(score))
    assert "'NaN'" in text(rowhash.pg_text(score))
    # reinterpretAsString would drop the zero bytes of 0.0; the fixed string keeps all 8
    assert "reinterpretAsFixedString(assumeNotNull(`score`))" in (rowhash.ch_text(score) or "")
    assert "isNaN(" in (rowhash.ch_text(score) or "")
    flag = column("ok", PgType.BOOL, "boolean")
    assert text(rowhash.pg_text(flag)) == "CASE WHEN \"ok\" THEN '1' ELSE '0' END"
    assert rowhash.ch_text(flag) == "toString(toUInt8(assumeNotNull(`ok`)))"
    raw = column("raw", PgType.BYTEA, "bytea")
    assert text(rowhash.pg_text(raw)) == "encode(\"raw\", 'hex')"
    assert rowhash.ch_text(raw) == "lower(hex(assumeNotNull(`raw`)))"
    # text-like values: Postgres' output function (bpchar keeps its padding, inet its form)
    assert text(rowhash.pg_text(column("code", BPCHAR, "character(4)"))) == 'concat("code")'
    assert rowhash.ch_text(MOOD) == "assumeNotNull(`mood`)"
    assert text(rowhash.pg_text(TAGS)) == 'concat("tags")'  # historic holds arrays as they are


def test_arrays_as_clickhouse_holds_them() -> None:
    """Elements' fields joined in brackets, in both engines; a NULL array as `[]`."""
    element = "octet_length(_cdc_u._cdc_value::text)::text || ':' || _cdc_u._cdc_value::text"
    assert text(rowhash.pg_held_text(TAGS)) == (
        "(SELECT '[' || coalesce(string_agg(CASE WHEN _cdc_u._cdc_value IS NULL THEN 'N' "
        f"ELSE {element} END, ',' ORDER BY _cdc_u._cdc_ordinal), '') || ']' "
        'FROM unnest("tags") WITH ORDINALITY AS _cdc_u(_cdc_value, _cdc_ordinal))'
    )
    assert rowhash.ch_text(TAGS) == (
        "concat('[', arrayStringConcat(arrayMap(_cdc_item1 -> if(isNull(_cdc_item1), 'N', "
        "concat(toString(length(toString(assumeNotNull(_cdc_item1)))), ':', "
        "toString(assumeNotNull(_cdc_item1)))), `tags`), ','), ']')"
    )
    # No NULL mark as ClickHouse holds it: a NULL array is the empty array's `2:[]`.
    held = text(rowhash.pg_field(TAGS, held=True))
    assert "IS NULL THEN 'N' ELSE octet_length((SELECT" not in held
    assert held.startswith("octet_length((SELECT '[' ||")
    assert rowhash.ch_field(TAGS).startswith("concat(toString(length(concat('['")
    # As it is (for historic), a NULL array is still `N`.
    assert text(rowhash.pg_field(TAGS)).startswith("CASE WHEN \"tags\" IS NULL THEN 'N'")


def test_arrays_nest_per_dimension() -> None:
    grid = column("grid", INT4_ARRAY, "integer[]", kind=TypeKind.ARRAY, element=TAGS)
    assert rowhash.array_shape(grid) == (2, TAGS.element)
    ch = rowhash.ch_text(grid)
    assert ch.startswith(
        "concat('[', arrayStringConcat(arrayMap(_cdc_item1 -> concat('[', arrayStringConcat("
        "arrayMap(_cdc_item2 -> if(isNull(_cdc_item2)"
    )
    assert ch.endswith(", _cdc_item1), ','), ']'), `grid`), ','), ']')")
    pg = text(rowhash.pg_held_text(grid))
    # A sub-array opens before every array_length(grid, 2)-th element and closes after it.
    assert "repeat('[', CASE WHEN mod(_cdc_u._cdc_ordinal - 1, array_length(\"grid\", 2))" in pg
    assert "repeat(']', CASE WHEN mod(_cdc_u._cdc_ordinal, array_length(\"grid\", 2))" in pg


def test_fields_mark_null_and_prefix_the_byte_length() -> None:
    pg = text(rowhash.pg_field(NAME))
    assert pg == (
        "CASE WHEN \"it's `odd`\" IS NULL THEN 'N' ELSE "
        "octet_length(concat(\"it's `odd`\"))::text || ':' || concat(\"it's `odd`\") END"
    )
    ch = rowhash.ch_field(NAME)
    assert ch == (
        "if(isNull(`it's \\`odd\\``), 'N', concat(toString(length(assumeNotNull(`it's \\`odd\\``)))"
        ", ':', assumeNotNull(`it's \\`odd\\``)))"
    )


def test_fields_of_comma_free_texts_end_at_a_comma() -> None:
    assert text(rowhash.pg_field(INT)) == (
        """CASE WHEN "id" IS NULL THEN 'N,' ELSE "id"::text || ',' END"""
    )
    assert rowhash.ch_field(INT) == (
        "if(isNull(`id`), 'N,', concat(toString(assumeNotNull(`id`)), ','))"
    )


def test_row_hashes_take_the_first_8_md5_bytes_as_signed_bigint() -> None:
    pg = text(rowhash.pg_row_hash([INT, NAME]))
    assert pg.startswith("('x' || left(md5((CASE WHEN \"id\" IS NULL")
    assert pg.endswith(", 16))::bit(64)::bigint")
    assert ") || (" in pg  # fields joined with ||, no argument limit
    ch = rowhash.ch_row_hash([INT, NAME])
    assert ch.startswith("reinterpretAsInt64(reverse(substring(MD5(concat(if(isNull(`id`)")
    assert ch.endswith("), 1, 8)))")
    assert rowhash.ch_row_hash([INT]).startswith("reinterpretAsInt64(reverse(substring(MD5(if(")


# -- key order and ranges -----------------------------------------------------------------


def test_clickhouse_orders_agree_with_postgres() -> None:
    assert keyrange.ch_order(INT, "p") == ("`id`", "CAST({p:String} AS Int32)")
    assert keyrange.ch_order(NAME, "p") == ("`it's \\`odd\\``", "{p:String}")
    uuid = column("u", PgType.UUID, "uuid")
    assert keyrange.ch_order(uuid, "p") == ("toString(`u`)", "{p:String}")  # CH sorts UUIDs its way
    moment = column("at", PgType.TIMESTAMPTZ, "timestamp with time zone")
    assert keyrange.ch_order(moment, "p") == (
        "`at`",
        "parseDateTime64BestEffort({p:String}, 6, 'UTC')",
    )
    assert keyrange.ch_order(column("f", PgType.FLOAT8, "double precision"), "p") is None
    assert keyrange.clickhouse_key_problem(TABLE) is None
    floaty = TableSchema(
        "s", "t", (column("f", PgType.FLOAT8, "double precision", False),), ("f",), "d"
    )
    assert keyrange.clickhouse_key_problem(floaty) == (
        "key column f (double precision) has no order shared with ClickHouse"
    )


def test_ranges_between() -> None:
    assert keyrange.ranges_between(None, None, []) == [KeyRange(None, None)]
    assert keyrange.ranges_between(("0",), ("9",), [("3",), ("6",)], root=4) == [
        KeyRange(("0",), ("3",), 4),
        KeyRange(("3",), ("6",), 4),
        KeyRange(("6",), ("9",), 4),
    ]


def test_pg_range_filter_binds_values() -> None:
    where, params = keyrange.pg_range_filter(TABLE, KeyRange(None, None))
    assert (text(where), params) == ("true", [])
    where, params = keyrange.pg_range_filter(TABLE, KeyRange(("10",), ("20",)))
    assert text(where) == '"id" > %s::integer AND "id" <= %s::integer'
    assert params == ["10", "20"]
    where, params = keyrange.pg_range_filter(PAIR, KeyRange(("o'k", "5"), None))
    assert text(where) == 'ROW("team" COLLATE "C", "id") > ROW(%s::text COLLATE "C", %s::integer)'
    assert params == ["o'k", "5"]


def test_pg_range_filter_inline_quotes_values() -> None:
    where, params = keyrange.pg_range_filter(PAIR, KeyRange(None, ("o'k", "5")), inline=True)
    assert params == []
    assert text(where) == (
        'ROW("team" COLLATE "C", "id") <= ROW(\'o\'\'k\'::text COLLATE "C", \'5\'::integer)'
    )


def test_enum_keys_sort_by_their_label_bytes() -> None:
    table = TableSchema(
        "s", "t", (column("mood", 99_001, "s.mood", False, kind=TypeKind.ENUM),), ("mood",), "d"
    )
    where, _ = keyrange.pg_range_filter(table, KeyRange(("ok",), None))
    assert text(where) == 'concat("mood") COLLATE "C" > %s::text COLLATE "C"'


def test_ch_range_filter_binds_values() -> None:
    where, params = keyrange.ch_range_filter(TABLE, KeyRange(None, None))
    assert (where, params) == ("1", {})
    where, params = keyrange.ch_range_filter(PAIR, KeyRange(("a'b", "1"), ("z", "9")))
    assert where == (
        "tuple(`team`, `id`) > tuple({lo0:String}, CAST({lo1:String} AS Int32)) AND "
        "tuple(`team`, `id`) <= tuple({hi0:String}, CAST({hi1:String} AS Int32))"
    )
    assert params == {"lo0": "a'b", "lo1": "1", "hi0": "z", "hi1": "9"}
    assert "a'b" not in where


def test_queries_keep_parameters_in_order() -> None:
    query, params = rangequery.pg_boundaries(TABLE, KeyRange(("1",), None), 500)
    assert params == ["1", 500]
    assert 'row_number() OVER (ORDER BY "id")' in text(query)
    assert 'FROM ONLY "director"."Score Card" WHERE "id" > %s::integer' in text(query)
    query, params = rangequery.pg_historic_rows(
        "historic", TABLE, KeyRange(None, ("7",)), rowhash.pg_row_hash([INT])
    )
    assert params == ["Score Card", "7"]
    assert text(query).index("table_name = %s") < text(query).index('"id" <= %s')
    everything = KeyRange(None, None)
    hashes = [rowhash.pg_row_hash(TABLE.columns)]
    query, params = rangequery.pg_aggregate(
        ("historic", "Score Card_current"), TABLE, everything, hashes
    )
    assert text(query).startswith("SELECT count(*), coalesce(sum(('x' || left(md5(")
    assert 'FROM ONLY "historic"."Score Card_current" WHERE true' in text(query)
    query, params = rangequery.pg_key_exists(PAIR, ("a", "1"))
    assert text(query) == (
        'SELECT EXISTS (SELECT FROM ONLY "director"."pairs" WHERE ROW("team" COLLATE "C", "id") = '
        'ROW(%s::text COLLATE "C", %s::integer))'
    )
    assert params == ["a", "1"]


def test_source_rows_after_read_size_keys_in_the_shared_order() -> None:
    hashes = [sql.SQL("h")]
    query, params = rangequery.pg_source_rows_after(PAIR, ("a", "1"), 500, hashes)
    assert params == ["a", "1", 500]
    assert text(query) == (
        'SELECT concat("team") AS "_cdc_c0", "id"::text AS "_cdc_c1", concat("team") AS '
        '"_cdc_c2", concat("id") AS "_cdc_c3", h AS "_cdc_c4" FROM ONLY "director"."pairs" WHERE '
        'ROW("team" COLLATE "C", "id") > ROW(%s::text COLLATE "C", %s::integer) '
        'ORDER BY "team" COLLATE "C", "id" LIMIT %s::bigint'
    )
    query, params = rangequery.pg_source_rows_after(TABLE, None, 1, hashes)
    assert params == [1]
    assert "WHERE true ORDER BY" in text(query)


def test_a_targets_fingerprint_as_of_a_snapshot_leaves_out_keys_changed_since() -> None:
    query, params = rangequery.pg_historic_aggregate(
        "historic", PAIR, KeyRange(("a", "1"), None), sql.SQL("h"), 7 << 64
    )
    assert params == [7 << 64, "pairs", 7 << 64, "pairs", 7 << 64, "a", "1"]
    older = (
        '"_version" < %s::numeric AND NOT "_is_deleted" AND "_version" > coalesce((SELECT '
        'version FROM "historic"."_cdc_truncations" WHERE table_name = %s), 0)'
    )
    assert text(query) == (
        f"SELECT count(*) FILTER (WHERE {older}), coalesce(sum(h) FILTER (WHERE {older}), 0), "
        'array_agg(ARRAY[concat("team"), "id"::text]) FILTER (WHERE "_version" >= %s::numeric) '
        'FROM "historic"."pairs" WHERE '
        'ROW("team" COLLATE "C", "id") > ROW(%s::text COLLATE "C", %s::integer)'
    )
    ch_query, ch_params = rangequery.ch_aggregate_before(
        "analytics", PAIR, KeyRange(None, None), "h", 5
    )
    assert ch_params == {"newer": 5, "verify_table": "pairs"}
    ch_older = (
        "`_version` < {newer:UInt128} AND `_is_deleted` = 0 AND `_version` > ifNull((SELECT "
        "max(version) FROM `analytics`.`_cdc_truncations` FINAL WHERE table_name = "
        "{verify_table:String}), 0)"
    )
    assert ch_query == (
        f"SELECT countIf({ch_older}), sumIf(toInt128(h), {ch_older}), "
        "groupArrayIf([assumeNotNull(`team`), toString(assumeNotNull(`id`))], "
        "`_version` >= {newer:UInt128}) FROM `analytics`.`pairs` FINAL WHERE 1"
    )


def test_clickhouse_queries() -> None:
    ch_hash = rowhash.ch_row_hash([INT, NAME])
    query, params = rangequery.ch_aggregate(
        "an`alytics", "Score Card_current", TABLE, KeyRange(("1",), None), ch_hash
    )
    assert query.startswith("SELECT count(), sum(toInt128(reinterpretAsInt64(")
    assert (
        "FROM `an\\`alytics`.`Score Card_current` WHERE `id` > CAST({lo0:String} AS Int32)" in query
    )
    assert params == {"lo0": "1"}
    query, params = rangequery.ch_rows("analytics", TABLE, KeyRange(None, None), ch_hash)
    assert "FROM `analytics`.`Score Card` WHERE 1 GROUP BY `id`" in query  # no FINAL: tombstones
    assert "argMax(`_is_deleted`, `_version`) = 0" in query
    assert params == {"verify_table": "Score Card"}
    query, _ = rangequery.ch_rows(
        "analytics", TABLE, KeyRange(None, None), ch_hash, distributed=True
    )
    assert "`analytics`.`Score Card_all`" in query and "`_cdc_truncations_all` FINAL" in query


# -- classification and report ------------------------------------------------------------

LOW, HIGH = 1000, 2000


def version(lsn: int, ordinal: int = 1) -> int:
    return (lsn << 64) | ordinal


def test_classify() -> None:
    source: dict[Ident, SourceRow] = {
        ("1",): SourceRow(("1",), (11, 21)),
        ("2",): SourceRow(("2",), (12, 22)),
        ("3",): SourceRow(("3",), (13, 23)),
        ("4",): SourceRow(("4",), (14, 24)),
        ("5",): SourceRow(("5",), (15, 25)),
    }
    rows: dict[Ident, TargetRow] = {
        ("1",): TargetRow(("1",), 11, version(5), True),  # equal
        ("2",): TargetRow(("2",), 99, version(5), True),  # changed
        ("3",): TargetRow(("3",), 13, version(5), False),  # deleted in the target only
        ("4",): TargetRow(("4",), 14, version(LOW + 1), False),  # deleted after the read
        # 5: missing altogether
        ("6",): TargetRow(("6",), 16, version(7), True),  # extra
        ("7",): TargetRow(("7",), 17, version(HIGH), True),  # inserted after the read
        ("8",): TargetRow(("8",), 18, version(9), False),  # a tombstone on both sides
        ("9",): TargetRow(("9",), 19, version(HIGH + 1), True),  # a version from the future
    }
    diffs = drift.classify(Target.HISTORIC, source, rows, (LOW, HIGH))
    found = [(d.key[0], d.kind, d.in_flight) for d in diffs]
    assert found == [
        ("2", DiffKind.CHANGED, False),
        ("3", DiffKind.MISSING, False),
        ("4", DiffKind.MISSING, True),
        ("5", DiffKind.MISSING, False),
        ("6", DiffKind.EXTRA, False),
        ("7", DiffKind.EXTRA, True),
        ("9", DiffKind.EXTRA, False),
    ]
    # ClickHouse compares the hash over its columns (the second source hash)
    ch_rows: dict[Ident, TargetRow] = {("1",): TargetRow(("1",), 21, version(5), True)}
    assert drift.classify(Target.CLICKHOUSE, {("1",): source[("1",)]}, ch_rows, (LOW, HIGH)) == []
    assert drift.classify(Target.HISTORIC, {("1",): source[("1",)]}, ch_rows, (LOW, HIGH)) == [
        KeyDiff(Target.HISTORIC, DiffKind.CHANGED, ("1",), ("1",), False)
    ]


def result_with(diffs: dict[KeyRange, list[KeyDiff]], **kw: object) -> TableResult:
    return TableResult(TABLE, 4, 1234, (Target.HISTORIC, Target.CLICKHOUSE), diffs, **kw)  # type: ignore[arg-type]


def diff(target: Target, kind: DiffKind, key: str) -> KeyDiff:
    return KeyDiff(target, kind, (key,), (key,), False)


def test_report_counts_and_names_keys() -> None:
    first, second, third = (
        KeyRange(None, ("5",), 0),
        KeyRange(("5",), ("9",), 0),
        KeyRange(("9",), None, 2),
    )
    missing = [diff(Target.HISTORIC, DiffKind.MISSING, str(i)) for i in range(7)]
    result = result_with(
        {
            first: missing[:3],
            second: [*missing[3:], diff(Target.CLICKHOUSE, DiffKind.CHANGED, "8")],
            third: [diff(Target.CLICKHOUSE, DiffKind.EXTRA, "12")],
        },
        in_flight=3,
    )
    assert not result.clean
    assert result.differing_ranges(Target.HISTORIC) == 1  # both pieces come from range 0
    assert result.differing_ranges(Target.CLICKHOUSE) == 2
    table, notes = drift.report(result, "verify")
    assert table.row_count == 2
    assert notes == [
        "historic missing: (0), (1), (2), (3), (4) and 2 more",
        "clickhouse extra: (12)",
        "clickhouse changed: (8)",
        "3 differences were changes newer than the source read (in flight), not drift",
    ]
    assert [str(c) for c in table.columns[6].cells] == ["drift", "drift"]


def test_report_unconfirmed_and_skipped_targets() -> None:
    result = result_with(
        {KeyRange(None, None): [diff(Target.HISTORIC, DiffKind.EXTRA, "1")]},
        unconfirmed="slot 'cdc' does not exist",
    )
    result.targets = (Target.HISTORIC,)
    result.clickhouse_skipped = "key column f (real) has no order shared with ClickHouse"
    table, notes = drift.report(result, "verify")
    assert [str(c) for c in table.columns[6].cells] == ["unconfirmed", "not compared"]
    assert notes == [
        "historic extra: (1)",
        "clickhouse not compared: key column f (real) has no order shared with ClickHouse",
        "unconfirmed: slot 'cdc' does not exist",
    ]


def test_all_clean_takes_the_repaired_result() -> None:
    drifted = result_with({KeyRange(None, None): [diff(Target.HISTORIC, DiffKind.EXTRA, "1")]})
    fixed = result_with({})
    assert drift.all_clean([fixed], [])
    assert not drift.all_clean([drifted], [])
    assert drift.all_clean([drifted], [fixed])
    assert not drift.all_clean([drifted], [drifted])

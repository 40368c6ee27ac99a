"""Postgres as the oracle: the pgoutput change source agrees with `test_decoding`.

Two logical slots are created at the same point in one database: a `pgoutput` slot read
through `cdc.stream.source.ChangeSource` (the real decoder and assembler, protocol v2+ streaming
on, `logical_decoding_work_mem` at its 64kB minimum so large transactions are streamed, and
a small memory budget so they spill to disk) and a `test_decoding` slot read with
`pg_logical_slot_get_changes`. Randomly generated workloads run on two tables (one with a
composite primary key, a non-ASCII schema and quoted identifiers): inserts, updates with
and without key changes, deletes, TRUNCATE, ALTER TABLE ADD/DROP COLUMN, multi-statement
transactions, whole-transaction ROLLBACK, nested SAVEPOINTs rolled back or released, NULLs,
unicode, 100 kB TOASTed values that come back as unchanged-toast, numeric/float8 specials,
jsonb, int[]/text[], timestamptz incl. infinity, uuid, an enum and bool. A large transaction
is streamed while other transactions (one of them another streamed transaction that is
rolled back) commit on a second connection, and it rolls back a savepoint whose changes
had already been streamed.

Both outputs are normalised to (xid, [(op, schema.table, key, old columns, new columns)])
with column names, type names and text values, and must be equal change for change;
`test_decoding` must also agree with the row counts the workload itself observed. Each run
also checks that every kind of change occurred, that streamed changes of a rolled-back
savepoint and of a rolled-back transaction reached the assembler (and were dropped by it),
and that transactions were interleaved with open streams.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple, TypeAlias

import psycopg
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.conninfo import make_conninfo

from cdc.apply.changes import Op, Transaction
from cdc.protocol import (
    UNCHANGED_TOAST,
    BinaryDatum,
    Commit,
    Decoder,
    LogicalMessage,
    Message,
    StreamAbort,
    StreamCommit,
    StreamStart,
    TupleValue,
    UnchangedToast,
)
from cdc.protocol import Delete as PgDelete
from cdc.protocol import Insert as PgInsert
from cdc.protocol import Update as PgUpdate
from cdc.stream.source import ChangeSource, SourceConfig

PUBLICATION = "oracle_pub"
WORK_MEM_OPTIONS = "-c logical_decoding_work_mem=64kB"  # the minimum: streams early
MEMORY_BUDGET = 128 << 10  # large transactions and TOASTed rows spill to disk
READ_DEADLINE_S = 30.0
IDLE_TIMEOUT_S = 0.3
XID_MODULUS = 1 << 32
FENCE_PREFIX, FENCE_CONTENT = "oracle-fence", b"end of workload"
BULK_ROWS = 1200  # well past 64kB of decoded changes; spilled past a 2000-record chunk
BIG_TEXT_BLOCKS = 3200  # 3200 md5 hex digests: 100 kB that pglz cannot shrink inline

# Printed by test_decoding the way pgoutput sends them; everything else is quoted.
UNQUOTED_TYPES = frozenset(
    {"smallint", "integer", "bigint", "oid", "real", "double precision", "numeric", "boolean"}
)
# The oracle session prints values with the settings the replication connection uses.
CANONICAL_SETTINGS = (
    "SET DateStyle = ISO",
    "SET TimeZone = 'UTC'",
    "SET IntervalStyle = postgres",
    "SET extra_float_digits = 3",
    "SET bytea_output = hex",
)
MOODS = ("sad", "ok", "it's fine", "😀 happy", "Ünïcødé\u0301")


# -- schema -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    key_columns: tuple[tuple[str, str], ...]  # (name, SQL type), in attribute order

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def first_key(self) -> sql.Identifier:
        return sql.Identifier(self.key_columns[0][0])

    @property
    def keys(self) -> sql.Composed:
        return sql.SQL(", ").join(sql.Identifier(name) for name, _ in self.key_columns)

    def __repr__(self) -> str:
        return f"{self.schema}.{self.name}"


ITEMS = Table("public", "items", (("id", "integer"),))
LINES = Table("Sales Dépt", "Order Lines", (("order_no", "bigint"), ("Line Code", "text")))
TABLES = (ITEMS, LINES)
VALUE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("Label", "text"),
    ("amount", "numeric"),
    ("score", "double precision"),
    ("flag", "boolean"),
    ("doc", "jsonb"),
    ("tags", "text[]"),
    ("nums", "integer[]"),
    ("seen_at", "timestamp with time zone"),
    ("ref", "uuid"),
    ("feeling", "mood"),
    ("body", "text"),
)
COLUMN_TYPES = dict(VALUE_COLUMNS)


def create_schema(conn: psycopg.Connection[Any]) -> None:
    conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(PUBLICATION)))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ITEMS.ident))
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(LINES.schema)))
    conn.execute("DROP TYPE IF EXISTS mood CASCADE")
    conn.execute(
        sql.SQL("CREATE TYPE mood AS ENUM ({})").format(
            sql.SQL(", ").join(sql.Literal(m) for m in MOODS)
        )
    )
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(LINES.schema)))
    values = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind)) for name, kind in VALUE_COLUMNS
    )
    for table in TABLES:
        keys = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind))
            for name, kind in table.key_columns
        )
        conn.execute(
            sql.SQL("CREATE TABLE {} ({}, {}, PRIMARY KEY ({}))").format(
                table.ident, keys, values, table.keys
            )
        )
    conn.execute(
        sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
            sql.Identifier(PUBLICATION), sql.SQL(", ").join(t.ident for t in TABLES)
        )
    )


# -- workload model ---------------------------------------------------------------------


@dataclass(frozen=True)
class BigText:
    """A 100 kB value of chained md5 digests (incompressible enough to be stored out of line)."""

    seed: int

    def text(self) -> str:
        return "".join(
            hashlib.md5(f"{self.seed}:{i}".encode()).hexdigest() for i in range(BIG_TEXT_BLOCKS)
        )


Param: TypeAlias = str | bool | list[str | None] | list[int | None] | BigText | None
Values: TypeAlias = tuple[tuple[str, Param], ...]


@dataclass(frozen=True)
class Insert:
    table: Table
    values: Values
    code: str  # "Line Code" of an order line


@dataclass(frozen=True)
class UpdateValues:
    table: Table
    pick: int
    count: int
    values: Values


@dataclass(frozen=True)
class UpdateKey:
    table: Table
    pick: int
    code: str | None  # order lines: a new "Line Code", or None for a new order_no


@dataclass(frozen=True)
class Delete:
    table: Table
    pick: int
    count: int


@dataclass(frozen=True)
class Truncate:
    tables: tuple[Table, ...]
    restart: bool
    cascade: bool


@dataclass(frozen=True)
class AlterTable:
    """Adds a column with a default, or drops the newest one added (schema changes mid-run)."""

    table: Table
    drop: bool


@dataclass(frozen=True)
class Savepoint:
    body: tuple[Statement, ...]
    rollback: bool


@dataclass(frozen=True)
class BulkInsert:
    table: Table
    rows: int


@dataclass(frozen=True)
class BulkUpdate:
    """Non-key update of the first `rows` rows of the table's last bulk insert."""

    table: Table
    rows: int


@dataclass(frozen=True)
class BulkRekey:
    """Moves the first `rows` rows of the table's last bulk insert to fresh keys."""

    table: Table
    rows: int


@dataclass(frozen=True)
class BulkDelete:
    """Deletes the last `rows` rows of the table's last bulk insert."""

    table: Table
    rows: int


@dataclass(frozen=True)
class ToastInsert:
    table: Table
    body: BigText


@dataclass(frozen=True)
class ToastTouch:
    """Updates another column of the last ToastInsert row (optionally its key as well)."""

    table: Table
    rekey: bool


Statement: TypeAlias = (
    Insert
    | UpdateValues
    | UpdateKey
    | Delete
    | Truncate
    | AlterTable
    | Savepoint
    | BulkInsert
    | BulkUpdate
    | BulkRekey
    | BulkDelete
    | ToastInsert
    | ToastTouch
)


@dataclass(frozen=True)
class Txn:
    label: str
    statements: tuple[Statement, ...]
    commit: bool
    # Run on the other connection before statements[pause], while this transaction is open.
    interleaved: tuple[Txn, ...] = ()
    pause: int = 0


# -- strategies -------------------------------------------------------------------------

TRICKY_TEXTS = (
    "",
    " ",
    "it's",
    "''",
    "'",
    "null",
    "NULL",
    "unchanged-toast-datum",
    "true",
    "tab\tnew\nline\r\n",
    "back\\slash \\' \\x00 \\\\",
    "emoji 🎉 👩\u200d👩\u200d👧\u200d👦 🏳\ufe0f\u200d🌈",
    "combining e\u0301 a\u0308 Z\u0324\u0354\u0367\u0311\u0313",
    "]: x[text]:'y' new-tuple: old-key: (no-tuple-data)",
    '"dq" {a,b} [1] \\"',
    "日本語テキスト",
    "\u202eRTL override\u202c",
    "\ufeffBOM",
)
safe_chars = st.characters(codec="utf-8", exclude_characters="\x00")
text_values = st.one_of(st.sampled_from(TRICKY_TEXTS), st.text(safe_chars, max_size=24))


def _float_text(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _numeric_text(parts: tuple[bool, str, str]) -> str:
    negative, whole, fraction = parts
    return f"{'-' if negative else ''}{whole}{'.' + fraction if fraction else ''}"


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text_values,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text_values, inner, max_size=3),
    max_leaves=8,
)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11, minutes=15))]
)
timestamp_values = st.one_of(
    st.sampled_from(
        ["infinity", "-infinity", "2000-01-01 00:00:00+00", "0044-03-15 12:00:00+00 BC"]
    ),
    st.datetimes(datetime(1, 1, 2), datetime(9999, 12, 30), timezones=zones).map(
        datetime.isoformat
    ),
)
digits = st.text("0123456789", min_size=1, max_size=40)
COLUMN_STRATEGIES: dict[str, st.SearchStrategy[Param]] = {
    "Label": text_values,
    "amount": st.one_of(
        st.sampled_from(["NaN", "Infinity", "-Infinity", "0", "-0.000", "1e-30", "9" * 60]),
        st.tuples(st.booleans(), digits, st.text("0123456789", max_size=60)).map(_numeric_text),
    ),
    "score": st.floats().map(_float_text),
    "flag": st.booleans(),
    "doc": json_values.map(_json_text),
    "tags": st.lists(st.none() | text_values, max_size=4),
    "nums": st.lists(st.none() | st.integers(-(2**31), 2**31 - 1), max_size=5),
    "seen_at": timestamp_values,
    "ref": st.uuids().map(str),
    "feeling": st.sampled_from(MOODS),
    "body": st.one_of(
        text_values, st.integers(0, 2**32).map(BigText), st.text(safe_chars, max_size=3000)
    ),
}


def _nullable(strategy: st.SearchStrategy[Param]) -> st.SearchStrategy[Param]:
    return st.one_of(st.none(), strategy, strategy)


tables = st.sampled_from(TABLES)
picks = st.integers(0, 10**6)
all_values: st.SearchStrategy[Values] = st.tuples(
    *(st.tuples(st.just(name), _nullable(COLUMN_STRATEGIES[name])) for name, _ in VALUE_COLUMNS)
)


@st.composite
def some_values(draw: st.DrawFn) -> Values:
    names = draw(st.lists(st.sampled_from(list(COLUMN_TYPES)), min_size=1, max_size=4, unique=True))
    return tuple((name, draw(_nullable(COLUMN_STRATEGIES[name]))) for name in names)


STATEMENT_KINDS = (
    ["insert"] * 4 + ["update"] * 3 + ["rekey", "delete", "savepoint"] * 2 + ["truncate", "alter"]
)


@st.composite
def statements(draw: st.DrawFn, depth: int = 0, exclusive: bool = True) -> Statement:
    """A random statement; `exclusive=False` leaves out TRUNCATE and ALTER TABLE (they would
    wait for a concurrently open transaction)."""
    kinds = [
        k
        for k in STATEMENT_KINDS
        if (k != "savepoint" or depth < 2) and (exclusive or k not in ("truncate", "alter"))
    ]
    kind = draw(st.sampled_from(kinds))
    if kind == "insert":
        return Insert(draw(tables), draw(all_values), draw(text_values))
    if kind == "update":
        return UpdateValues(draw(tables), draw(picks), draw(st.integers(1, 3)), draw(some_values()))
    if kind == "rekey":
        return UpdateKey(draw(tables), draw(picks), draw(st.none() | text_values))
    if kind == "delete":
        return Delete(draw(tables), draw(picks), draw(st.integers(1, 3)))
    if kind == "truncate":
        chosen = draw(st.sampled_from([(ITEMS,), (LINES,), (ITEMS, LINES), (LINES, ITEMS)]))
        return Truncate(chosen, draw(st.booleans()), draw(st.booleans()))
    if kind == "alter":
        return AlterTable(draw(tables), draw(st.booleans()))
    body = draw(st.lists(statements(depth + 1, exclusive), min_size=1, max_size=3))
    return Savepoint(tuple(body), draw(st.booleans()))


@st.composite
def random_txns(draw: st.DrawFn, commit: bool | None = None, exclusive: bool = True) -> Txn:
    body = draw(st.lists(statements(exclusive=exclusive), min_size=1, max_size=6))
    if commit is None:
        commit = draw(st.sampled_from([True, True, True, False]))
    return Txn("random", tuple(body), commit)


@st.composite
def workloads(draw: st.DrawFn) -> tuple[Txn, ...]:
    txns = draw(st.lists(random_txns(), min_size=4, max_size=10))
    concurrent = st.lists(random_txns(exclusive=False), max_size=2)
    interleaved = (
        *draw(concurrent),
        # Streamed, then rolled back as a whole; the warm-up caches the table in the
        # walsender (see `streamed` for why).
        Txn("warm-up", (BulkInsert(LINES, 5),), True),
        Txn("streamed-rollback", (BulkInsert(LINES, BULK_ROWS), BulkUpdate(LINES, 50)), False),
        *draw(concurrent),
    )
    streamed = Txn(
        "streamed",
        (
            # Both tables are touched before the savepoint: a change that needs a catalog
            # lookup while streaming lets the walsender notice that its (sub)transaction has
            # already aborted, and then it skips streaming it.
            BulkInsert(LINES, 40),
            BulkInsert(ITEMS, BULK_ROWS),
            Savepoint((BulkInsert(LINES, BULK_ROWS), BulkUpdate(ITEMS, 200)), True),
            BulkUpdate(ITEMS, 100),
            BulkRekey(ITEMS, 20),
            BulkDelete(ITEMS, 30),
            *draw(st.lists(statements(), max_size=3)),
        ),
        True,
        interleaved,
        pause=3,  # other transactions commit while this one is open and partly streamed
    )
    ddl_table = draw(tables)
    units: list[list[Txn]] = [
        [  # a TOASTed value, then updates that leave it unchanged (with and without a key change)
            Txn("toast", (ToastInsert(ITEMS, draw(st.builds(BigText, picks))),), True),
            Txn("toast", (ToastInsert(LINES, draw(st.builds(BigText, picks))),), True),
            Txn("toast-touch", (ToastTouch(ITEMS, False), ToastTouch(LINES, True)), True),
            Txn("toast-touch", (ToastTouch(ITEMS, True), ToastTouch(LINES, False)), True),
        ],
        [streamed],
        [  # the table's shape changes twice between its changes inside one transaction
            Txn(
                "schema-change",
                (
                    Insert(ddl_table, draw(all_values), draw(text_values)),
                    AlterTable(ddl_table, drop=False),
                    Insert(ddl_table, draw(all_values), draw(text_values)),
                    UpdateValues(ddl_table, draw(picks), 2, draw(some_values())),
                    AlterTable(ddl_table, drop=True),
                    Insert(ddl_table, draw(all_values), draw(text_values)),
                ),
                True,
            )
        ],
        [
            Txn(
                "truncate",
                (Truncate((LINES, ITEMS), draw(st.booleans()), draw(st.booleans())),),
                True,
            )
        ],
        [draw(random_txns(commit=False))],
    ]
    order: list[list[Txn]] = [[txn] for txn in txns]
    for unit in units:  # each unit stays contiguous
        order.insert(draw(st.integers(0, len(order))), unit)
    return tuple(txn for unit in order for txn in unit)


# -- running the workload ---------------------------------------------------------------


class Outcome(NamedTuple):
    label: str
    xid: int
    committed: bool
    changes: int  # row changes that survived savepoint rollbacks


def _param(value: Param) -> object:
    return value.text() if isinstance(value, BigText) else value


def _cast(name: str, placeholder: str) -> sql.Composed:
    return sql.SQL("{}::{}").format(sql.Placeholder(placeholder), sql.SQL(COLUMN_TYPES[name]))


def _pick_rows(table: Table) -> sql.Composed:
    """Rows `pick` .. `pick + count - 1` (modulo the row count) in key order."""
    return sql.SQL(
        "({keys}) IN (SELECT {keys} FROM (SELECT {keys}, row_number() OVER (ORDER BY {keys}) - 1"
        " AS rn, count(*) OVER () AS total FROM {t}) AS ranked"
        " WHERE rn >= mod(%(pick)s, total) AND rn < mod(%(pick)s, total) + %(count)s)"
    ).format(keys=table.keys, t=table.ident)


def _bulk_values(table: Table) -> sql.Composed:
    if table is ITEMS:
        keys = sql.SQL("%(base)s::integer + g")
    else:
        keys = sql.SQL("%(base)s::bigint + g, 'line ' || g || ' ✓'")
    return sql.SQL(
        "SELECT {keys}, 'bulk #' || g || ' it''s ✓', (g * 1.25)::numeric, g / 7.0::float8,"
        " mod(g, 2) = 0, jsonb_build_object('g', g, 's', 'ü' || g), ARRAY['a' || g, NULL],"
        " ARRAY[g, -g], '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute',"
        " md5(g::text)::uuid, (enum_range(NULL::mood))[1 + mod(g, 3)],"
        " CASE WHEN mod(g, 50) = 0 THEN NULL ELSE repeat(md5(g::text), 3) END"
        " FROM generate_series(1, %(rows)s) AS g"
    ).format(keys=keys)


class Runner:
    """Executes a workload with explicit BEGIN/COMMIT on two autocommit connections."""

    def __init__(self, conn: psycopg.Connection[Any], other: psycopg.Connection[Any]) -> None:
        self.conns = (conn, other)
        self.conn = conn
        self.next_key = 1
        self.bulk: dict[Table, tuple[int, int]] = {}  # base key, rows
        self.toast_row: dict[Table, tuple[int, str]] = {}
        self.added_columns: dict[Table, list[str]] = {table: [] for table in TABLES}

    def fresh_keys(self, count: int = 1) -> int:
        first = self.next_key
        self.next_key += count
        return first

    def run(self, txn: Txn) -> list[Outcome]:
        """Outcomes of `txn` and of the transactions interleaved with it, in commit order."""
        outcomes = []
        self.conn.execute("BEGIN")
        counts = [0]
        for index, statement in enumerate(txn.statements):
            if index == txn.pause and txn.interleaved:
                mine = self.conn
                self.conn = self.conns[1] if mine is self.conns[0] else self.conns[0]
                try:
                    outcomes += [o for t in txn.interleaved for o in self.run(t)]
                finally:
                    self.conn = mine
            self.statement(statement, counts)
        row = self.conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        assert row is not None
        self.conn.execute("COMMIT" if txn.commit else "ROLLBACK")
        outcomes.append(Outcome(txn.label, int(row[0]) % XID_MODULUS, txn.commit, counts[0]))
        return outcomes

    def statement(self, statement: Statement, counts: list[int]) -> None:
        if isinstance(statement, Savepoint):
            name = sql.Identifier(f"sp{len(counts)}")
            self.conn.execute(sql.SQL("SAVEPOINT {}").format(name))
            counts.append(0)
            for inner in statement.body:
                self.statement(inner, counts)
            survived = counts.pop()
            if statement.rollback:
                self.conn.execute(sql.SQL("ROLLBACK TO SAVEPOINT {}").format(name))
            else:
                self.conn.execute(sql.SQL("RELEASE SAVEPOINT {}").format(name))
                counts[-1] += survived
            return
        counts[-1] += self.change(statement)

    def execute(self, query: sql.Composed, params: Mapping[str, object]) -> int:
        rowcount: int = self.conn.execute(query, params).rowcount
        return rowcount

    def change(self, s: Statement) -> int:
        if isinstance(s, Insert):
            return self.insert(s.table, s.values, s.code)
        if isinstance(s, UpdateValues):
            params: dict[str, object] = {"pick": s.pick, "count": s.count}
            sets = []
            for i, (name, value) in enumerate(s.values):
                params[f"v{i}"] = _param(value)
                sets.append(sql.SQL("{} = {}").format(sql.Identifier(name), _cast(name, f"v{i}")))
            query = sql.SQL("UPDATE {} SET {} WHERE {}").format(
                s.table.ident, sql.SQL(", ").join(sets), _pick_rows(s.table)
            )
            return self.execute(query, params)
        if isinstance(s, UpdateKey):
            params = {"pick": s.pick, "count": 1, "key": self.fresh_keys(), "code": s.code}
            if s.table is ITEMS or s.code is None:
                target = sql.SQL("{} = %(key)s").format(s.table.first_key)
            else:
                target = sql.SQL("{} = %(code)s || '#' || %(key)s").format(
                    sql.Identifier("Line Code")
                )
            query = sql.SQL("UPDATE {} SET {} WHERE {}").format(
                s.table.ident, target, _pick_rows(s.table)
            )
            return self.execute(query, params)
        if isinstance(s, Delete):
            query = sql.SQL("DELETE FROM {} WHERE {}").format(s.table.ident, _pick_rows(s.table))
            return self.execute(query, {"pick": s.pick, "count": s.count})
        if isinstance(s, Truncate):
            query = sql.SQL("TRUNCATE {}{}{}").format(
                sql.SQL(", ").join(t.ident for t in s.tables),
                sql.SQL(" RESTART IDENTITY" if s.restart else ""),
                sql.SQL(" CASCADE" if s.cascade else ""),
            )
            self.execute(query, {})
            return len(s.tables)
        if isinstance(s, AlterTable):
            added = self.added_columns[s.table]
            if s.drop and added:  # may be gone already (rolled back): IF EXISTS
                query = sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}").format(
                    s.table.ident, sql.Identifier(added.pop())
                )
            else:
                number = self.fresh_keys()
                added.append(f"added {number}")
                query = sql.SQL("ALTER TABLE {} ADD COLUMN {} text DEFAULT {}").format(
                    s.table.ident, sql.Identifier(added[-1]), sql.Literal(f"default {number}")
                )
            self.execute(query, {})
            return 0
        if isinstance(s, BulkInsert):
            base = self.fresh_keys(s.rows)
            self.bulk[s.table] = (base, s.rows)
            query = sql.SQL("INSERT INTO {} {}").format(s.table.ident, _bulk_values(s.table))
            return self.execute(query, {"base": base - 1, "rows": s.rows})
        if isinstance(s, BulkUpdate | BulkRekey | BulkDelete):
            return self.bulk_change(s)
        if isinstance(s, ToastInsert):
            code = f"toast ✓ {self.next_key}"
            self.toast_row[s.table] = (self.next_key, code)
            return self.insert(s.table, (("Label", "toasted"), ("body", s.body)), code)
        assert isinstance(s, ToastTouch), s
        key, code = self.toast_row[s.table]
        new_key = self.fresh_keys()
        sets = [sql.SQL("{} = 'touched ' || %(new_key)s").format(sql.Identifier("Label"))]
        if s.rekey:
            sets.append(sql.SQL("{} = %(new_key)s").format(s.table.first_key))
            self.toast_row[s.table] = (new_key, code)
        query = sql.SQL("UPDATE {} SET {} WHERE {}").format(
            s.table.ident, sql.SQL(", ").join(sets), self.key_match(s.table)
        )
        return self.execute(query, {"key": key, "code": code, "new_key": new_key})

    @staticmethod
    def key_match(table: Table) -> sql.Composable:
        if table is ITEMS:
            return sql.SQL("id = %(key)s")
        return sql.SQL("order_no = %(key)s AND {} = %(code)s").format(sql.Identifier("Line Code"))

    def insert(self, table: Table, values: Values, code: str) -> int:
        key = self.fresh_keys()
        params: dict[str, object] = {"key": key, "code": code}
        names = [sql.Identifier(name) for name, _ in table.key_columns]
        placeholders: list[sql.Composable] = [sql.Placeholder("key")]
        if table is LINES:
            placeholders.append(sql.Placeholder("code"))
        for i, (name, value) in enumerate(values):
            params[f"v{i}"] = _param(value)
            names.append(sql.Identifier(name))
            placeholders.append(_cast(name, f"v{i}"))
        query = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            table.ident, sql.SQL(", ").join(names), sql.SQL(", ").join(placeholders)
        )
        return self.execute(query, params)

    def bulk_change(self, s: BulkUpdate | BulkRekey | BulkDelete) -> int:
        base, rows = self.bulk[s.table]
        key = s.table.first_key
        if isinstance(s, BulkDelete):
            query = sql.SQL("DELETE FROM {} WHERE {} > %(lo)s AND {} <= %(hi)s").format(
                s.table.ident, key, key
            )
            return self.execute(query, {"lo": base + rows - 1 - s.rows, "hi": base + rows - 1})
        if isinstance(s, BulkRekey):
            moved = self.fresh_keys(s.rows)
            query = sql.SQL(
                "UPDATE {t} SET {k} = {k} - %(base)s + %(moved)s"
                " WHERE {k} >= %(lo)s AND {k} < %(hi)s"
            ).format(t=s.table.ident, k=key)
            params = {"base": base, "moved": moved, "lo": base, "hi": base + s.rows}
            return self.execute(query, params)
        query = sql.SQL(
            "UPDATE {t} SET {label} = {label} || ' ✎', score = score * 2, flag = NOT flag,"
            " doc = doc || '{{\"touched\": true}}' WHERE {k} >= %(lo)s AND {k} < %(hi)s"
        ).format(t=s.table.ident, label=sql.Identifier("Label"), k=key)
        return self.execute(query, {"lo": base, "hi": base + s.rows})


# -- normalised changes -----------------------------------------------------------------

Value: TypeAlias = str | UnchangedToast | None
Column: TypeAlias = tuple[str, str, Value]  # name, type (format_type), text value


class Row(NamedTuple):
    op: Op
    table: tuple[str, str]
    key: tuple[Value, ...]
    old: tuple[Column, ...] | None  # non-NULL old columns (the key, for default identity)
    new: tuple[Column, ...] | None


class Decoded(NamedTuple):
    xid: int
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Catalog:
    keys: dict[tuple[str, str], tuple[str, ...]]  # primary key columns in attribute order
    type_names: dict[int, str]  # type oid -> format_type(oid, NULL)

    @classmethod
    def load(cls, conn: psycopg.Connection[Any]) -> Catalog:
        rows = conn.execute(
            "SELECT n.nspname, c.relname, a.attname, a.attnum = ANY(i.indkey)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
            " JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary"
            " WHERE c.oid = ANY(%s::regclass[]) ORDER BY c.oid, a.attnum",
            ([t.ident.as_string(conn) for t in TABLES],),
        ).fetchall()
        keys: dict[tuple[str, str], tuple[str, ...]] = {}
        for schema, table, column, is_key in rows:
            keys.setdefault((schema, table), ())
            if is_key:
                keys[(schema, table)] += (column,)
        assert set(keys) == {(t.schema, t.name) for t in TABLES}, keys
        types = conn.execute("SELECT oid::int, format_type(oid, NULL) FROM pg_type").fetchall()
        return cls(keys, dict(types))

    def key(self, table: tuple[str, str], columns: tuple[Column, ...]) -> tuple[Value, ...]:
        values = {name: value for name, _, value in columns}
        missing = [k for k in self.keys[table] if k not in values]
        assert not missing, f"{table}: key columns {missing} missing from {_brief(columns)}"
        return tuple(values[k] for k in self.keys[table])


def make_row(
    catalog: Catalog,
    op: Op,
    table: tuple[str, str],
    old: tuple[Column, ...] | None,
    new: tuple[Column, ...] | None,
) -> Row:
    if op is Op.TRUNCATE:
        return Row(op, table, (), None, None)
    if old is not None:
        old = tuple(column for column in old if column[2] is not None)
    source = new if op is not Op.DELETE else old
    assert source is not None, f"{op.name} on {table} without a tuple"
    return Row(op, table, catalog.key(table, source), old, new)


# -- test_decoding side -----------------------------------------------------------------

UNQUOTED_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_$]*")
OPS = {"INSERT": Op.INSERT, "UPDATE": Op.UPDATE, "DELETE": Op.DELETE, "TRUNCATE": Op.TRUNCATE}
TRUNCATE_FLAGS = ("(no-flags)", "restart_seqs", "cascade", "restart_seqs cascade")


class OutputParser:
    """One `table ...` line of test_decoding output (values may contain newlines)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> AssertionError:
        around = self.text[max(self.pos - 40, 0) : self.pos + 40]
        return AssertionError(f"test_decoding output: {what} at offset {self.pos}: {around!r}")

    def accept(self, literal: str) -> bool:
        if self.text.startswith(literal, self.pos):
            self.pos += len(literal)
            return True
        return False

    def expect(self, literal: str) -> None:
        if not self.accept(literal):
            raise self.fail(f"expected {literal!r}")

    def identifier(self) -> str:
        """An identifier as quote_identifier prints it."""
        if self.accept('"'):
            parts = []
            while True:
                end = self.text.find('"', self.pos)
                if end < 0:
                    raise self.fail("unterminated quoted identifier")
                parts.append(self.text[self.pos : end])
                self.pos = end + 1
                if not self.accept('"'):
                    return '"'.join(parts)
        match = UNQUOTED_IDENTIFIER.match(self.text, self.pos)
        if match is None:
            raise self.fail("expected an identifier")
        self.pos = match.end()
        return match.group()

    def qualified_name(self) -> tuple[str, str]:
        schema = self.identifier()
        self.expect(".")
        return schema, self.identifier()

    def value(self, type_name: str) -> Value:
        if self.accept("'"):
            parts = []
            while True:
                end = self.text.find("'", self.pos)
                if end < 0:
                    raise self.fail("unterminated quoted value")
                parts.append(self.text[self.pos : end])
                self.pos = end + 1
                if not self.accept("'"):
                    return "'".join(parts)
        end = self.text.find(" ", self.pos)
        end = len(self.text) if end < 0 else end
        token, self.pos = self.text[self.pos : end], end
        if token == "null":
            return None
        if token == "unchanged-toast-datum":
            return UNCHANGED_TOAST
        if type_name not in UNQUOTED_TYPES:
            raise self.fail(f"unquoted {token!r} for type {type_name}")
        if type_name == "boolean":
            return {"true": "t", "false": "f"}[token]
        return token

    def columns(self) -> tuple[Column, ...]:
        columns = []
        while self.pos < len(self.text) and not self.text.startswith(" new-tuple:", self.pos):
            self.expect(" ")
            name = self.identifier()
            self.expect("[")
            end = self.text.find("]:", self.pos)
            if end < 0:
                raise self.fail("expected a column type")
            type_name, self.pos = self.text[self.pos : end], end + 2
            columns.append((name, type_name, self.value(type_name)))
        if not columns:
            raise self.fail("expected tuple data")
        return tuple(columns)

    def change(self, catalog: Catalog) -> list[Row]:
        self.expect("table ")
        tables = [self.qualified_name()]
        while self.accept(", "):
            tables.append(self.qualified_name())
        self.expect(": ")
        op_name = self.text[self.pos : self.text.find(":", self.pos)]
        op = OPS.get(op_name)
        if op is None:
            raise self.fail("expected an operation")
        self.pos += len(op_name) + 1
        if op is Op.TRUNCATE:
            flags = self.text[self.pos :].strip()
            if flags not in TRUNCATE_FLAGS:
                raise self.fail(f"unknown TRUNCATE flags {flags!r}")
            return [make_row(catalog, op, table, None, None) for table in tables]
        if len(tables) != 1:
            raise self.fail("several tables for a row change")
        old = new = None
        if op is Op.DELETE:
            old = self.columns()
        elif op is Op.UPDATE and self.accept(" old-key:"):
            old = self.columns()
            self.expect(" new-tuple:")
        if op is not Op.DELETE:
            new = self.columns()
        if self.pos != len(self.text):
            raise self.fail("trailing text")
        return [make_row(catalog, op, tables[0], old, new)]


def parse_test_decoding(lines: Sequence[str], catalog: Catalog) -> list[Decoded]:
    decoded: list[Decoded] = []
    xid: int | None = None
    rows: list[Row] = []
    fence = (
        f"message: transactional: 0 prefix: {FENCE_PREFIX}, sz: {len(FENCE_CONTENT)}"
        f" content:{FENCE_CONTENT.decode()}"
    )
    assert lines and lines[-1] == fence, (
        f"test_decoding output does not end with the fence: {lines[-1:]}"
    )
    for line in lines[:-1]:
        if match := re.fullmatch(r"BEGIN (\d+)", line):
            assert xid is None, f"BEGIN inside transaction {xid}"
            xid, rows = int(match.group(1)), []
        elif match := re.fullmatch(r"COMMIT (\d+)", line):
            assert xid == int(match.group(1)), f"COMMIT {match.group(1)} closes {xid}"
            decoded.append(Decoded(xid, tuple(rows)))
            xid = None
        else:
            assert xid is not None, f"change outside a transaction: {line[:200]!r}"
            rows.extend(OutputParser(line).change(catalog))
    assert xid is None, f"transaction {xid} not committed in the output"
    return decoded


def read_test_decoding(conn: psycopg.Connection[Any], slot: str) -> list[str]:
    for statement in CANONICAL_SETTINGS:
        conn.execute(statement)
    cursor = conn.execute(
        "SELECT data FROM pg_logical_slot_get_changes(%s, NULL, NULL,"
        " 'include-xids', '1', 'skip-empty-xacts', '1')",
        (slot,),
    )
    return [str(data) for (data,) in cursor]


# -- pgoutput side ----------------------------------------------------------------------


class CountingDecoder(Decoder):
    """The real decoder, noting what went over the wire: message counts, streamed changes
    per (sub)xid, stream aborts, and what arrived while a streamed transaction was open."""

    __slots__ = ("aborts", "counts", "interleaved", "open_streams", "streamed_changes")

    def __init__(self, proto_version: int) -> None:
        super().__init__(proto_version)
        self.counts: Counter[str] = Counter()
        self.aborts: list[StreamAbort] = []
        self.streamed_changes: Counter[int] = Counter()
        self.open_streams: set[int] = set()
        self.interleaved: Counter[str] = Counter()

    def decode(self, payload: bytes | memoryview) -> Message:
        message = super().decode(payload)
        self.counts[type(message).__name__] += 1
        if isinstance(message, StreamAbort):
            self.aborts.append(message)
            if message.subxid == message.xid:
                self.open_streams.discard(message.xid)
        elif isinstance(message, PgInsert | PgUpdate | PgDelete) and message.xid is not None:
            self.streamed_changes[message.xid] += 1
        elif isinstance(message, StreamStart):
            if self.open_streams - {message.xid}:
                self.interleaved["StreamStart"] += 1
            self.open_streams.add(message.xid)
        elif isinstance(message, StreamCommit):
            self.open_streams.discard(message.xid)
        elif isinstance(message, Commit) and self.open_streams:
            self.interleaved["Commit"] += 1
        return message

    def discarded(self, *, savepoints: bool) -> int:
        """Streamed row changes of rolled-back savepoints (or of rolled-back transactions)."""
        return sum(
            self.streamed_changes[abort.subxid]
            for abort in self.aborts
            if (abort.subxid != abort.xid) == savepoints
        )


def _text(value: TupleValue) -> Value:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, BinaryDatum):
        raise AssertionError(f"binary datum on a text-format stream: {value!r}")
    return value


def _tuple_columns(
    data: tuple[TupleValue, ...] | None, names: list[tuple[str, str]]
) -> tuple[Column, ...] | None:
    if data is None:
        return None
    assert len(data) == len(names), f"{len(data)} values for {len(names)} columns"
    return tuple((n, t, _text(v)) for (n, t), v in zip(names, data, strict=True))


def normalise_transaction(tx: Transaction, catalog: Catalog) -> Decoded:
    rows = []
    for change in tx.changes():
        relation = change.relation
        table = (relation.namespace, relation.name)
        names = [(c.name, catalog.type_names[c.type_oid]) for c in relation.columns]
        flagged = tuple(c.name for c in relation.columns if c.is_key)
        assert flagged == catalog.keys[table], f"{table}: key flags {flagged}"

        old, new = _tuple_columns(change.old, names), _tuple_columns(change.new, names)
        rows.append(make_row(catalog, change.op, table, old, new))
    return Decoded(tx.xid, tuple(rows))


@dataclass
class PgoutputRun:
    decoded: list[Decoded] = field(default_factory=list)
    empty: int = 0  # committed transactions without changes (streamed, all rolled back)
    messages: Counter[str] = field(default_factory=Counter)
    discarded_savepoint_changes: int = 0
    discarded_transaction_changes: int = 0
    interleaved: Counter[str] = field(default_factory=Counter)
    enum_types: list[str] = field(default_factory=list)
    seconds: float = 0.0


def read_pgoutput(dsn: str, slot: str, catalog: Catalog, expected: int) -> PgoutputRun:
    """Transactions until the fence message arrived and the source is idle (everything
    committed before the fence precedes it on the wire), within `READ_DEADLINE_S`."""
    run = PgoutputRun()
    config = SourceConfig(
        make_conninfo(dsn, options=WORK_MEM_OPTIONS),
        slot,
        PUBLICATION,
        memory_budget=MEMORY_BUDGET,
        status_interval=1.0,
    )
    source = ChangeSource(config)
    started = time.monotonic()
    try:
        source.start()
        assert source.stream.proto_version >= 2, "streaming needs pgoutput protocol 2+"
        decoder = CountingDecoder(source.stream.proto_version)
        source.decoder = decoder
        deadline = started + READ_DEADLINE_S
        fenced = False
        for event in source.events(IDLE_TIMEOUT_S):
            if event is None:
                if fenced or time.monotonic() > deadline:
                    break
                continue
            if isinstance(event, LogicalMessage):
                assert (event.prefix, event.content, event.transactional) == (
                    FENCE_PREFIX,
                    FENCE_CONTENT,
                    False,
                ), f"unexpected logical message {event!r}"
                fenced = True
                continue
            assert not fenced, f"a transaction after the fence: {event!r}"
            try:
                decoded = normalise_transaction(event, catalog)
            finally:
                event.close()
            if decoded.rows:
                run.decoded.append(decoded)
            else:
                run.empty += 1
            source.acknowledge(event.end_lsn)
            if time.monotonic() > deadline:
                break
        assert source.reconnects == 0, "the replication connection dropped during the test"
        assert fenced, (
            f"no fence message within {READ_DEADLINE_S} s; got {len(run.decoded)} of"
            f" {expected} transactions"
        )
        run.messages = decoder.counts
        run.discarded_savepoint_changes = decoder.discarded(savepoints=True)
        run.discarded_transaction_changes = decoder.discarded(savepoints=False)
        run.interleaved = decoder.interleaved
        run.enum_types = [t.name for t in source.assembler.types.values()]
    finally:
        source.close()
        run.seconds = time.monotonic() - started
    return run


# -- comparison -------------------------------------------------------------------------


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 600 else f"{text[:400]} …({len(text)} chars)… {text[-150:]}"


def _first_difference(expected: list[Decoded], actual: list[Decoded]) -> str:
    for index, (want, got) in enumerate(zip(expected, actual, strict=False)):
        if want == got:
            continue
        if want.xid != got.xid:
            return f"transaction #{index}: test_decoding xid {want.xid}, pgoutput xid {got.xid}"
        for ordinal, (w, g) in enumerate(zip(want.rows, got.rows, strict=False), start=1):
            if w != g:
                return (
                    f"transaction #{index} (xid {want.xid}), change {ordinal}:\n"
                    f"  test_decoding: {_brief(w)}\n  pgoutput:      {_brief(g)}"
                )
        return (
            f"transaction #{index} (xid {want.xid}): test_decoding has {len(want.rows)} changes,"
            f" pgoutput {len(got.rows)}"
        )
    return f"test_decoding has {len(expected)} transactions, pgoutput {len(actual)}"


def _columns(decoded: list[Decoded]) -> Iterator[Column]:
    for txn in decoded:
        for row in txn.rows:
            yield from row.new or ()


def drop_slot(conn: psycopg.Connection[Any], slot: str) -> None:
    """Drop `slot` once its walsender has let go of it."""
    deadline = time.monotonic() + 10
    while True:
        row = conn.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
        if row is None:
            return
        if not row[0]:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            return
        assert time.monotonic() < deadline, f"slot {slot} still active"
        time.sleep(0.05)


@settings(
    max_examples=8,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(workload=workloads())
def test_one_ordered_stream_as_test_decoding_reads_it(
    pg_dsn: str, workload: tuple[Txn, ...]
) -> None:
    suffix = uuid.uuid4().hex[:12]
    pgoutput_slot, oracle_slot = f"oracle_pgoutput_{suffix}", f"oracle_test_decoding_{suffix}"
    with (
        psycopg.connect(pg_dsn, autocommit=True) as conn,
        psycopg.connect(pg_dsn, autocommit=True) as other,
    ):
        for session in (conn, other):  # a mistake in the workload fails instead of hanging
            session.execute("SET lock_timeout = '10s'")
        create_schema(conn)
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (pgoutput_slot,))
        conn.execute(
            "SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (oracle_slot,)
        )
        try:
            runner = Runner(conn, other)
            outcomes = [outcome for txn in workload for outcome in runner.run(txn)]
            # The fence goes out with a commit record, which flushes it to the WAL (both
            # decoders read only flushed WAL); the transaction itself has no changes.
            conn.execute("BEGIN")
            conn.execute("SELECT pg_current_xact_id()")
            conn.execute(
                "SELECT pg_logical_emit_message(false, %s, %s)", (FENCE_PREFIX, FENCE_CONTENT)
            )
            conn.execute("COMMIT")
            catalog = Catalog.load(conn)
            oracle = parse_test_decoding(read_test_decoding(conn, oracle_slot), catalog)
            run = read_pgoutput(pg_dsn, pgoutput_slot, catalog, len(oracle))
        finally:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")  # the workload failed half-way
            drop_slot(conn, pgoutput_slot)
            drop_slot(conn, oracle_slot)

    # The oracle agrees with what the workload did: committed transactions with surviving
    # changes, in commit order, with as many changes as the statements reported.
    committed = [(o.xid, o.changes) for o in outcomes if o.committed and o.changes]
    assert [(d.xid, len(d.rows)) for d in oracle] == committed, (
        "test_decoding disagrees with the workload's own row counts: "
        f"{[(d.xid, len(d.rows)) for d in oracle]} vs {committed}"
    )

    # The change source agrees with the oracle, change for change.
    assert run.decoded == oracle, _first_difference(oracle, run.decoded)
    rolled_back = {o.xid for o in outcomes if not o.committed}
    assert not rolled_back & {d.xid for d in run.decoded}, "a rolled-back transaction appeared"

    # The run exercised what it is meant to.
    rows = [row for txn in oracle for row in txn.rows]
    ops = Counter(row.op for row in rows)
    assert all(ops[op] > 0 for op in Op), f"not every kind of change occurred: {ops}"
    assert any(r.op is Op.UPDATE and r.old for r in rows), "no key-changing update"
    assert any(r.op is Op.UPDATE and r.old is None for r in rows), "no non-key update"
    values = [value for _, _, value in _columns(oracle)]
    assert UNCHANGED_TOAST in values, "no unchanged TOAST value"
    assert None in values, "no NULL"
    assert any(isinstance(v, str) and len(v) >= 100_000 for v in values), "no 100 kB value"
    assert run.messages["StreamCommit"] >= 1, f"nothing was streamed: {run.messages}"
    assert run.discarded_savepoint_changes > 0, "no streamed change of a rolled-back savepoint"
    assert run.discarded_transaction_changes > 0, "no streamed change of a rolled-back transaction"
    assert run.interleaved["Commit"] > 0, "no transaction committed inside an open stream"
    assert run.interleaved["StreamStart"] > 0, "no two transactions streamed at once"
    assert "mood" in run.enum_types, f"no Type message for the enum: {run.enum_types}"
    shapes = [
        {len(row.new) for row in txn.rows if row.new and row.table == table}
        for txn in oracle
        for table in {row.table for row in txn.rows}
    ]
    assert any(len(shape) > 1 for shape in shapes), "no schema change inside a transaction"

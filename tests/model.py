"""A seeded random workload for the model-based oracle test (`test_model.py`).

Five tables that meet every hard case at once: a composite key whose rows move between
keys, a uuid key, quoted identifiers with spaces and capitals, a partitioned table whose
rows move between partitions (one attached with rows while running, one detached, one
truncated by itself), a table without a key (an append-only log: inserts, identical rows,
TRUNCATE then inserts); out-of-line text
(`STORAGE EXTERNAL`, incompressible, over 2 kB, so unchanged values are not resent),
`text[]`, jsonb, numeric, timestamptz at 1969/1970/2100 and bytea that is not UTF-8.
Transactions mix inserts, updates of a subset of columns, deletes, multi-row key shifts,
key swaps, delete and re-insert, savepoint and full rollbacks, TRUNCATE then inserts, and
transactions larger than `logical_decoding_work_mem`; several writers hit hot keys, and
retry deadlocks and serialization failures as an application does.

Each transaction's operations are drawn before it runs (so a retry runs the same ones) and
written to a workload log, one JSON line per attempt.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from cdc.protocol.lsn import Lsn

SCHEMA = """
CREATE SCHEMA director;
CREATE TABLE director.order_lines (
    order_id int NOT NULL, line int NOT NULL, qty int, price numeric(12,3),
    tags text[], note text, PRIMARY KEY (order_id, line));
ALTER TABLE director.order_lines ALTER note SET STORAGE EXTERNAL;
CREATE TABLE director.cards (
    id uuid PRIMARY KEY, payload jsonb, score numeric(12,3), at timestamptz,
    blob bytea, memo text);
ALTER TABLE director.cards ALTER memo SET STORAGE EXTERNAL;
CREATE TABLE director."Team Notes" (
    "Team Id" int PRIMARY KEY, "Rank" int, "Seen At" timestamptz, "Body Text" text);
ALTER TABLE director."Team Notes" ALTER "Body Text" SET STORAGE EXTERNAL;
CREATE TABLE director.events (
    id int NOT NULL, day int NOT NULL, kind text, body text, PRIMARY KEY (id, day))
    PARTITION BY RANGE (day);
CREATE TABLE director.events_a PARTITION OF director.events FOR VALUES FROM (0) TO (10);
CREATE TABLE director.events_b PARTITION OF director.events FOR VALUES FROM (10) TO (20);
ALTER TABLE director.events ALTER body SET STORAGE EXTERNAL;
CREATE TABLE director.ledger (account int, amount numeric(12,2), note text, at timestamptz);
"""
# Replica identities a run may give order_lines (each carries key changes differently).
IDENTITIES = {
    "default": [],
    "full": ["ALTER TABLE director.order_lines REPLICA IDENTITY FULL"],
    "using index": [
        "CREATE UNIQUE INDEX order_lines_ident ON director.order_lines (order_id, line)",
        "ALTER TABLE director.order_lines REPLICA IDENTITY USING INDEX order_lines_ident",
    ],
}

ORDERS = 24
HOT_ORDERS = 3
LINES = 6
SHIFT = 1000
TEAMS = 40
EVENTS = 30
DAYS = 30  # events_a holds days 0-9, events_b 10-19; 20-29 once events_c is attached
CARD_POOL = 60
LEDGER_ROWS = 20
INSTANTS: list[datetime | str] = [
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2100, 6, 1, 12, 0, 0, 500000, tzinfo=UTC),
    "infinity",  # ClickHouse holds the ends of its range: the texts below say so
    "-infinity",
]
RETRIED = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
SKIPPED = (
    psycopg.errors.UniqueViolation,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.CheckViolation,  # an event of a day no partition holds (not yet, or no more)
)


@dataclass(frozen=True)
class Column:
    name: str
    pg: str  # an expression of `c` giving the value's canonical text in Postgres
    ch: str  # the same text from the ClickHouse column `c`


def _int(name: str) -> Column:
    return Column(name, "{c}::text", "toString({c})")


def _long_text(name: str) -> Column:
    return Column(name, "md5({c})", "lower(hex(MD5({c})))")


def _numeric(name: str) -> Column:
    return Column(name, "trim_scale({c})::text", "toString({c})")


def _instant(name: str) -> Column:
    return Column(
        name,
        "CASE WHEN {c} = 'infinity' THEN '2299-12-31 23:59:59.999999' "
        "WHEN {c} = '-infinity' THEN '1900-01-01 00:00:00.000000' "
        "ELSE to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') END",
        "formatDateTime({c}, '%Y-%m-%d %H:%i:%S.%f')",
    )


@dataclass(frozen=True)
class Table:
    name: str
    key: tuple[str, ...]  # none: an append-only log, each row identified by its `_version`
    columns: tuple[Column, ...]


TABLES = (
    Table(
        "order_lines",
        ("order_id", "line"),
        (
            _int("order_id"),
            _int("line"),
            _int("qty"),
            _numeric("price"),
            # A NULL array is stored as [] in ClickHouse.
            Column(
                "tags", "array_to_json(coalesce({c}, '{{}}'::text[]))::text", "toJSONString({c})"
            ),
            _long_text("note"),
        ),
    ),
    Table(
        "cards",
        ("id",),
        (
            Column("id", "{c}::text", "toString({c})"),
            Column("payload", "{c}::text", "{c}"),
            _numeric("score"),
            _instant("at"),
            Column("blob", "encode({c}, 'hex')", "lower(hex({c}))"),
            _long_text("memo"),
            Column("stage", "{c}", "{c}"),  # added as `state`, then renamed (`MIGRATIONS`)
        ),
    ),
    Table(
        "Team Notes",
        ("Team Id",),
        (
            _int("Team Id"),
            _int("Rank"),
            _instant("Seen At"),
            _long_text("Body Text"),
            _int("Level"),  # added, dropped and added again while running (`MIGRATIONS`)
        ),
    ),
    Table(
        "events",  # partitioned: rows move between partitions; one attached, one detached
        ("id", "day"),
        (_int("id"), _int("day"), Column("kind", "{c}", "{c}"), _long_text("body")),
    ),
    Table(
        "ledger",  # no key: only inserted to and truncated, so the targets equal the source
        (),
        (_int("account"), _numeric("amount"), _long_text("note"), _instant("at")),
    ),
)


def pg_exprs(columns: tuple[Column, ...]) -> sql.Composed:
    """The canonical text of `columns`, comma-separated, for a SELECT list."""
    return sql.SQL(", ").join(sql.SQL(c.pg).format(c=sql.Identifier(c.name)) for c in columns)


def key_columns(table: Table) -> tuple[Column, ...]:
    return tuple(c for c in table.columns if c.name in table.key)


Op = Callable[[psycopg.Connection[Any]], object]


@dataclass
class Txn:
    """A transaction drawn in advance: its operations, each run in a savepoint (one that
    fails on a key taken meanwhile is rolled back alone), and how it ends."""

    kinds: list[str] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    rollback: bool = False
    big: bool = False

    def add(self, kind: str, op: Op) -> None:
        self.kinds.append(kind)
        self.ops.append(op)


class Workload:
    """Draws transactions from a seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        pool = random.Random(seed ^ 0x5EED)
        self.cards = [uuid.UUID(int=pool.getrandbits(128), version=4) for _ in range(CARD_POOL)]

    # -- values ----------------------------------------------------------------------------

    def long_text(self) -> str | None:
        """Over 2 kB that does not compress (random hex), now and then NULL or short."""
        roll = self.rng.random()
        if roll < 0.08:
            return None
        if roll < 0.15:
            return f"short {self.rng.random()}"
        return self.rng.randbytes(self.rng.randint(1100, 1800)).hex()

    def tags(self) -> list[str | None] | None:
        roll = self.rng.random()
        if roll < 0.15:
            return None
        if roll < 0.3:
            return []
        words = ["a", "b c", 'quote"d', "x,y", "{brace}", "ü", None]
        return [self.rng.choice(words) for _ in range(self.rng.randint(1, 4))]

    def price(self) -> Decimal | None:
        if self.rng.random() < 0.1:
            return None
        return Decimal(self.rng.randint(-(10**9), 10**9)) / 1000

    def instant(self) -> datetime | str | None:
        roll = self.rng.random()
        if roll < 0.1:
            return None
        if roll < 0.5:
            return self.rng.choice(INSTANTS)
        base = datetime(2024, 1, 1, tzinfo=UTC)
        return base + timedelta(microseconds=self.rng.randint(0, 10**14))

    def payload(self) -> str | None:
        if self.rng.random() < 0.1:
            return None
        return json.dumps(
            {"n": self.rng.randint(0, 99), "s": self.rng.choice(["ok", "✓ done", 'q"t']),
             "list": [self.rng.random() < 0.5, None, self.rng.randint(1, 5)]},
            ensure_ascii=False,
        )  # fmt: skip

    def blob(self) -> bytes | None:
        if self.rng.random() < 0.1:
            return None
        return bytes([0xFF, 0x00, 0x80, 0xC3]) + self.rng.randbytes(self.rng.randint(0, 40))

    def order(self) -> int:
        if self.rng.random() < 0.4:
            return self.rng.randint(1, HOT_ORDERS)
        return self.rng.randint(1, ORDERS)

    def line(self) -> int:
        return self.rng.randint(1, LINES) + (SHIFT if self.rng.random() < 0.3 else 0)

    def card(self) -> uuid.UUID:
        if self.rng.random() < 0.3:
            return self.rng.choice(self.cards[:5])
        return self.rng.choice(self.cards)

    def team(self) -> int:
        return self.rng.randint(1, 5) if self.rng.random() < 0.3 else self.rng.randint(1, TEAMS)

    # -- operations --------------------------------------------------------------------------

    def order_line_row(self, order_id: int, line: int) -> tuple[Any, ...]:
        return (order_id, line, self.rng.randint(0, 50), self.price(), self.tags(),
                self.long_text())  # fmt: skip

    def seed_rows(self, conn: psycopg.Connection[Any]) -> None:
        """Rows present before the daemon starts (its initial load copies them)."""
        with conn.transaction():
            for order_id in range(1, ORDERS + 1):
                for line in range(1, LINES // 2 + 1):
                    insert_line(conn, self.order_line_row(order_id, line))
            for card in self.cards[: CARD_POOL // 2]:
                insert_card(conn, self.card_row(card))
            for team in range(1, TEAMS // 2):
                insert_team(conn, self.team_row(team))
            for event in range(1, EVENTS // 2):
                insert_event(conn, self.event_row(event, self.rng.randrange(20)))
            insert_entries(conn, [self.entry() for _ in range(LEDGER_ROWS)] * 2)  # twice each

    def card_row(self, card: uuid.UUID) -> tuple[Any, ...]:
        return (card, self.payload(), self.price(), self.instant(), self.blob(), self.long_text())

    def event_row(self, event: int, day: int) -> tuple[Any, ...]:
        return (event, day, self.rng.choice(["open", "done", None]), self.long_text())

    def entry(self) -> tuple[Any, ...]:
        """A ledger row; a few accounts and amounts, so identical rows are frequent."""
        amount = Decimal(self.rng.randint(-3, 3)) / 2
        note = self.long_text() if self.rng.random() < 0.3 else None
        return (self.rng.randint(1, 4), amount, note, self.rng.choice(INSTANTS))

    def team_row(self, team: int) -> tuple[Any, ...]:
        return (team, self.rng.randint(0, 9), self.instant(), self.long_text())

    def draw(self) -> Txn:
        txn = Txn()
        rng = self.rng
        if rng.random() < 0.02:
            self._big(txn)
        else:
            for _ in range(rng.choice([1, 1, 2, 3, 5, 8])):
                self._one(txn)
        txn.rollback = rng.random() < 0.07
        return txn

    def _big(self, txn: Txn) -> None:
        """Over `logical_decoding_work_mem`: the server streams it before it commits."""
        txn.big = True
        order_id = self.order()
        notes = [self.rng.randbytes(1500).hex() for _ in range(LINES)]
        qty = self.rng.randint(0, 9)

        def rewrite(conn: psycopg.Connection[Any]) -> None:
            # An application's transactional message, which the daemon passes over; over
            # 64 kB alone, so the transaction is large whatever rows the others find.
            conn.execute("SELECT pg_logical_emit_message(true, 'model-big', repeat('x', 70000))")
            for line, note in enumerate(notes, start=1):
                conn.execute(
                    "UPDATE director.order_lines SET note = %s WHERE order_id = %s AND line = %s",
                    (note, order_id, line),
                )
            conn.execute("UPDATE director.cards SET score = score + 1")
            conn.execute("UPDATE director.order_lines SET qty = %s WHERE order_id <= 12", (qty,))

        txn.add("big", rewrite)
        for _ in range(20):
            self._one(txn)

    def _one(self, txn: Txn) -> None:
        if self.rng.random() < 0.12:
            self._event_change(txn, self.rng.random())
            return
        if self.rng.random() < 0.08:
            self._ledger_change(txn, self.rng.random())
            return
        roll = self.rng.random()
        order_id, line = self.order(), self.line()
        if roll < 0.58:
            self._line_change(txn, roll, order_id, line)
        elif roll < 0.83:
            self._card_change(txn, roll)
        elif roll < 0.985:
            self._team_change(txn, roll)
        else:
            row = self.order_line_row(order_id, line)
            txn.add("savepoint rollback", lambda c: rolled_back(c, row))

    def _line_change(self, txn: Txn, roll: float, order_id: int, line: int) -> None:
        rng = self.rng
        if roll < 0.14:
            row = self.order_line_row(order_id, line)
            txn.add("line insert", lambda c: insert_line(c, row))
        elif roll < 0.26:
            qty = rng.randint(0, 50)
            txn.add("line qty", lambda c: c.execute(
                "UPDATE director.order_lines SET qty = %s WHERE order_id = %s AND line = %s",
                (qty, order_id, line)))  # fmt: skip
        elif roll < 0.31:
            note = self.long_text()
            txn.add("line note", lambda c: c.execute(
                "UPDATE director.order_lines SET note = %s WHERE order_id = %s AND line = %s",
                (note, order_id, line)))  # fmt: skip
        elif roll < 0.37:
            txn.add("line delete", lambda c: c.execute(
                "DELETE FROM director.order_lines WHERE order_id = %s AND line = %s",
                (order_id, line)))  # fmt: skip
        elif roll < 0.45:
            back = rng.random() < 0.5
            txn.add("line shift", lambda c: shift_order(c, order_id, back))
        elif roll < 0.50:
            a, b = rng.sample(range(1, LINES + 1), 2)
            txn.add("line swap", lambda c: swap_lines(c, order_id, a, b))
        elif roll < 0.54:
            row = self.order_line_row(order_id, line)
            txn.add("line delete+insert", lambda c: reinsert_line(c, row))
        else:
            target = self.order()
            txn.add("line move order", lambda c: c.execute(
                "UPDATE director.order_lines SET order_id = %s, qty = coalesce(qty, 0) + 1 "
                "WHERE order_id = %s AND line = %s", (target, order_id, line)))  # fmt: skip

    def _card_change(self, txn: Txn, roll: float) -> None:
        if roll < 0.66:
            row = self.card_row(self.card())
            txn.add("card upsert", lambda c: insert_card(c, row, upsert=True))
        elif roll < 0.72:
            card, score, at = self.card(), self.price(), self.instant()
            txn.add("card touch", lambda c: c.execute(
                "UPDATE director.cards SET score = %s, at = %s WHERE id = %s",
                (score, at, card)))  # fmt: skip
        elif roll < 0.75:
            card, memo = self.card(), self.long_text()
            txn.add("card memo", lambda c: c.execute(
                "UPDATE director.cards SET memo = %s WHERE id = %s", (memo, card)))  # fmt: skip
        elif roll < 0.79:
            card = self.card()
            txn.add("card delete", lambda c: c.execute(
                "DELETE FROM director.cards WHERE id = %s", (card,)))  # fmt: skip
        else:
            old, new = self.card(), self.card()
            payload = self.payload()
            txn.add("card rekey", lambda c: c.execute(
                "UPDATE director.cards SET id = %s, payload = %s WHERE id = %s",
                (new, payload, old)))  # fmt: skip

    def _event_change(self, txn: Txn, roll: float) -> None:
        rng = self.rng
        event, day = rng.randint(1, EVENTS), rng.randrange(DAYS)
        if roll < 0.35:
            row = self.event_row(event, day)
            txn.add("event insert", lambda c: insert_event(c, row))
        elif roll < 0.55:
            kind = rng.choice(["open", "done", "late", None])
            txn.add("event kind", lambda c: c.execute(
                "UPDATE director.events SET kind = %s WHERE id = %s", (kind, event)))  # fmt: skip
        elif roll < 0.67:
            # Into another partition: Postgres deletes the row there and inserts it here.
            step = rng.choice([10, 20])
            txn.add("event move partition", lambda c: c.execute(
                "UPDATE director.events SET day = (day + %s) %% %s WHERE id = %s",
                (step, DAYS, event)))  # fmt: skip
        elif roll < 0.77:
            # Another key in the same partition, the out-of-line body left alone.
            txn.add("event next day", lambda c: c.execute(
                "UPDATE director.events SET day = day + 1 WHERE id = %s AND day %% 10 < 9",
                (event,)))  # fmt: skip
        elif roll < 0.85:
            body = self.long_text()
            txn.add("event body", lambda c: c.execute(
                "UPDATE director.events SET body = %s WHERE id = %s", (body, event)))  # fmt: skip
        elif roll < 0.98:
            txn.add("event delete", lambda c: c.execute(
                "DELETE FROM director.events WHERE id = %s", (event,)))  # fmt: skip
        else:
            # A partition truncated by itself: Postgres streams nothing for it.
            txn.add("event partition truncate", truncate_events_a)

    def _ledger_change(self, txn: Txn, roll: float) -> None:
        if roll < 0.7:
            entries = [self.entry() for _ in range(self.rng.randint(1, 3))]
            txn.add("ledger insert", lambda c: insert_entries(c, entries))
        elif roll < 0.95:
            entry, times = self.entry(), self.rng.randint(2, 5)
            txn.add("ledger same rows", lambda c: insert_entries(c, [entry] * times))
        else:
            entries = [self.entry() for _ in range(2)]
            txn.add("ledger truncate+insert", lambda c: truncate_ledger(c, entries))

    def _team_change(self, txn: Txn, roll: float) -> None:
        rng = self.rng
        if roll < 0.88:
            row = self.team_row(self.team())
            txn.add("team insert", lambda c: insert_team(c, row))
        elif roll < 0.92:
            team, rank = self.team(), rng.randint(0, 9)
            txn.add("team rank", lambda c: c.execute(
                'UPDATE director."Team Notes" SET "Rank" = %s WHERE "Team Id" = %s',
                (rank, team)))  # fmt: skip
        elif roll < 0.95:
            team = self.team()
            offset = rng.choice([100, -100])
            txn.add("team rekey", lambda c: c.execute(
                'UPDATE director."Team Notes" SET "Team Id" = "Team Id" + %s WHERE "Team Id" = %s',
                (offset, team if offset > 0 else team + 100)))  # fmt: skip
        elif roll < 0.97:
            team = self.team()
            txn.add("team delete", lambda c: c.execute(
                'DELETE FROM director."Team Notes" WHERE "Team Id" = %s', (team,)))  # fmt: skip
        else:
            rows = [self.team_row(t) for t in rng.sample(range(1, TEAMS + 1), 5)]
            txn.add("team truncate+insert", lambda c: truncate_teams(c, rows))


def insert_line(conn: psycopg.Connection[Any], row: tuple[Any, ...]) -> None:
    conn.execute("INSERT INTO director.order_lines VALUES (%s, %s, %s, %s, %s, %s)", row)


def reinsert_line(conn: psycopg.Connection[Any], row: tuple[Any, ...]) -> None:
    """Delete a line and insert it again with new values, under the same key."""
    conn.execute(
        "DELETE FROM director.order_lines WHERE order_id = %s AND line = %s", (row[0], row[1])
    )
    insert_line(conn, row)


def insert_card(conn: psycopg.Connection[Any], row: tuple[Any, ...], upsert: bool = False) -> None:
    conflict = (
        " ON CONFLICT (id) DO UPDATE SET payload = excluded.payload, blob = excluded.blob"
        if upsert
        else ""
    )
    conn.execute("INSERT INTO director.cards VALUES (%s, %s, %s, %s, %s, %s)" + conflict, row)


def insert_event(conn: psycopg.Connection[Any], row: tuple[Any, ...]) -> None:
    conn.execute("INSERT INTO director.events VALUES (%s, %s, %s, %s)", row)


def truncate_events_a(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET LOCAL lock_timeout = '2s'")
    conn.execute("TRUNCATE director.events_a")


def insert_entries(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO director.ledger VALUES (%s, %s, %s, %s)", rows)


def truncate_ledger(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
    conn.execute("SET LOCAL lock_timeout = '2s'")
    conn.execute("TRUNCATE director.ledger")
    insert_entries(conn, rows)


def insert_team(conn: psycopg.Connection[Any], row: tuple[Any, ...]) -> None:
    conn.execute('INSERT INTO director."Team Notes" VALUES (%s, %s, %s, %s)', row)


def shift_order(conn: psycopg.Connection[Any], order_id: int, back: bool) -> None:
    """Move every line of an order up by SHIFT (or back down), in one statement."""
    if back:
        conn.execute(
            "UPDATE director.order_lines SET line = line - %s WHERE order_id = %s AND line > %s",
            (SHIFT, order_id, SHIFT),
        )
    else:
        conn.execute(
            "UPDATE director.order_lines SET line = line + %s WHERE order_id = %s AND line < %s",
            (SHIFT, order_id, SHIFT),
        )


def swap_lines(conn: psycopg.Connection[Any], order_id: int, a: int, b: int) -> None:
    """Swap two lines' keys through a temporary key."""
    move = "UPDATE director.order_lines SET line = %s WHERE order_id = %s AND line = %s"
    conn.execute(move, (-1, order_id, a))
    conn.execute(move, (a, order_id, b))
    conn.execute(move, (b, order_id, -1))


def truncate_teams(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
    conn.execute("SET LOCAL lock_timeout = '2s'")
    conn.execute('TRUNCATE director."Team Notes"')
    for row in rows:
        insert_team(conn, row)


class _Undo(Exception):
    pass


def rolled_back(conn: psycopg.Connection[Any], row: tuple[Any, ...]) -> None:
    """Changes made in a savepoint that is then rolled back."""
    try:
        with conn.transaction():
            insert_line(conn, row)
            conn.execute("UPDATE director.cards SET score = -1")
            raise _Undo
    except (_Undo, *SKIPPED):
        pass


@dataclass
class WriterStats:
    committed: int = 0
    rolled_back: int = 0
    retried: int = 0
    skipped_ops: int = 0
    big: int = 0
    last_big_lsn: int = 0  # where the WAL ended just before the last large one committed


def run_writer(dsn: str, seed: int, stop: threading.Event, log: Path, stats: WriterStats) -> None:
    """Run transactions until `stop`; the source restarting is waited out."""
    workload = Workload(seed)
    with log.open("a") as out:
        while not stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    while not stop.is_set():
                        _run_txn(conn, workload.draw(), out, stats)
            except psycopg.OperationalError:
                stop.wait(0.5)


def _run_txn(conn: psycopg.Connection[Any], txn: Txn, out: Any, stats: WriterStats) -> None:
    for attempt in range(5):
        outcome, big_lsn = "committed", 0
        try:
            with conn.transaction() as tx:
                for op in txn.ops:
                    try:
                        with conn.transaction():
                            op(conn)
                    except SKIPPED:
                        stats.skipped_ops += 1
                if txn.rollback:
                    outcome = "rolled back"
                    raise psycopg.Rollback(tx)
                if txn.big:
                    row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
                    big_lsn = int(Lsn.parse(row[0])) if row else 0
        except RETRIED as exc:
            outcome = type(exc).__name__
            stats.retried += 1
        out.write(json.dumps({"ops": txn.kinds, "attempt": attempt, "outcome": outcome}) + "\n")
        if outcome == "committed":
            stats.committed += 1
            stats.big += txn.big
            stats.last_big_lsn = big_lsn or stats.last_big_lsn
            return
        if outcome == "rolled back":
            stats.rolled_back += 1
            return


# Migrations while the daemon runs, each once, in this order, at a random moment of the run:
# column types widened, which the targets follow (a key column of ClickHouse by remaking
# its table); columns added with a default, which the rows already there hold at the
# source; and changes of rows that no change carries: a column renamed, one dropped and
# added again under its name, a rewrite whose USING changes the values; a table rebuilt
# under its name in one transaction (copied whole by the daemon, replacing, while the
# writers go on deleting).
MIGRATIONS = (
    "ALTER TABLE director.order_lines ALTER qty TYPE bigint",
    'ALTER TABLE director."Team Notes" ALTER "Team Id" TYPE bigint',
    "ALTER TABLE director.cards ALTER score TYPE numeric(16,4)",
    "ALTER TABLE director.cards ALTER score TYPE numeric",
    "ALTER TABLE director.order_lines ALTER line TYPE bigint, ALTER price TYPE numeric(14,3)",
    'ALTER TABLE director."Team Notes" ADD COLUMN "Level" int NOT NULL DEFAULT 3',
    "ALTER TABLE director.cards ADD COLUMN state text DEFAULT 'open'",
    "ALTER TABLE director.cards RENAME COLUMN state TO stage",
    "CREATE TABLE director.events_c (LIKE director.events INCLUDING ALL); "
    "INSERT INTO director.events_c SELECT g, 20 + g % 10, 'attached', md5(g::text) "
    "FROM generate_series(1, 8) g; "
    "ALTER TABLE director.events ATTACH PARTITION director.events_c FOR VALUES FROM (20) TO (30)",
    "ALTER TABLE director.events DETACH PARTITION director.events_b",
    'ALTER TABLE director."Team Notes" DROP COLUMN "Level"',
    'ALTER TABLE director."Team Notes" ADD COLUMN "Level" int NOT NULL DEFAULT 4',
    'ALTER TABLE director."Team Notes" ALTER "Rank" TYPE bigint USING "Rank" * 10',
    "ALTER TABLE director.cards RENAME TO cards_old; "
    "CREATE TABLE director.cards (LIKE director.cards_old INCLUDING ALL); "
    "INSERT INTO director.cards SELECT * FROM director.cards_old; "
    "DROP TABLE director.cards_old",
)


MIGRATION_ATTEMPTS = 100


def run_migrations(dsn: str, seed: int, seconds: float, stop: threading.Event, log: Path) -> int:
    """Run `MIGRATIONS` at random moments within `seconds` (as an application's migration
    would: waiting its turn for the table's lock); those still to make when `stop` is set
    are made then, as the writers stop. Returns how many were made."""
    rng = random.Random(seed)
    moments = sorted(rng.uniform(0.05, 0.85) * seconds for _ in MIGRATIONS)
    started, made = time.monotonic(), 0
    with log.open("a") as out:
        for statement, moment in zip(MIGRATIONS, moments, strict=True):
            stop.wait(max(0.0, started + moment - time.monotonic()))
            for _ in range(MIGRATION_ATTEMPTS):
                try:
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        conn.execute("SET lock_timeout = '1s'")
                        conn.execute(statement)
                    made += 1
                    out.write(json.dumps({"migrated": statement}) + "\n")
                    break
                except (*RETRIED, psycopg.errors.LockNotAvailable, psycopg.OperationalError):
                    time.sleep(0.2)
    return made

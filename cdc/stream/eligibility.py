"""Which tables of the source schema the pipeline may publish, and, for the others, why not
and the statement that fixes it.

A table in a publication that publishes UPDATE or DELETE must have a usable replica
identity, or Postgres refuses the application's own UPDATE and DELETE on it (DESIGN.md
invariant 7): a primary key under the default identity, REPLICA IDENTITY USING INDEX (while
the index exists), or REPLICA IDENTITY FULL. For a partitioned table this must hold for
every leaf partition, the tables the application's writes land in. Unlogged tables are not
written to the WAL, so no publication can carry them. The facts come from one catalog query
(`source_tables`); the rule (`exclusion`) is a pure function over them.

A table without a usable replica identity (and not partitioned) is replicated instead as
an append-only log (`logged_only`): through a second publication that publishes inserts
and truncates only, which leaves the application's UPDATE and DELETE alone. Its updates
and deletes are not replicated; `changes_not_replicated` says so and how to fix it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

import psycopg

# A relation's replica identity is usable: FULL, or DEFAULT with a primary key, or USING
# INDEX with the index still there. `{c}` is the alias of a pg_class row.
_USABLE: Final = """({c}.relreplident = 'f' OR EXISTS (
    SELECT 1 FROM pg_index i WHERE i.indrelid = {c}.oid AND CASE {c}.relreplident
        WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident ELSE false END))"""

# The partitions (or inheritance children), all levels, of the table whose pg_class row is
# `c`: from pg_inherits, so a transaction that imported a snapshot sees them as they were
# then (`pg_partition_tree` reads the catalog as it is now).
_LEAVES: Final = """(WITH RECURSIVE tree(relid) AS (
        SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = c.oid
        UNION ALL SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.relid)
    SELECT relid FROM tree)"""

SOURCE_TABLES_SQL: Final = f"""
SELECT c.relname, format('%%I.%%I', n.nspname, c.relname), c.relkind = 'p',
       c.relpersistence = 'u', c.relreplident,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
       CASE WHEN c.relkind = 'p' THEN
           ARRAY(SELECT format('%%I.%%I', ln.nspname, l.relname)
                 FROM {_LEAVES} t
                 JOIN pg_class l ON l.oid = t.relid
                 JOIN pg_namespace ln ON ln.oid = l.relnamespace
                 WHERE l.relkind = 'r' AND NOT {_USABLE.format(c="l")}
                 ORDER BY 1)
       WHEN NOT {_USABLE.format(c="c")} THEN ARRAY[format('%%I.%%I', n.nspname, c.relname)]
       ELSE '{{}}'::text[] END,
       ARRAY(SELECT t.relid::oid::bigint FROM {_LEAVES} t
             JOIN pg_class l ON l.oid = t.relid
             WHERE c.relkind = 'p' AND l.relkind <> 'p' ORDER BY 1),
       c.oid::bigint,
       coalesce((SELECT jsonb_agg(jsonb_build_array(a.attnum, a.attname, a.atttypid::bigint,
                                                    a.atttypmod) ORDER BY a.attnum)
                 FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attgenerated = ''), '[]'::jsonb),
       CASE WHEN c.relkind = 'p' THEN
           ARRAY(SELECT l.relfilenode::bigint FROM {_LEAVES} t
                 JOIN pg_class l ON l.oid = t.relid
                 WHERE l.relkind <> 'p' ORDER BY t.relid)
       ELSE ARRAY[c.relfilenode::bigint] END,
       coalesce((SELECT jsonb_agg(jsonb_build_array(e.typ, e.labels) ORDER BY e.typ)
                 FROM (SELECT en.enumtypid::bigint AS typ,
                              array_agg(en.enumlabel::text ORDER BY en.enumsortorder) AS labels
                       FROM pg_enum en
                       WHERE en.enumtypid IN (
                           SELECT u.oid FROM pg_attribute a
                           JOIN pg_type t ON t.oid = a.atttypid,
                           LATERAL (VALUES (t.oid), (t.typelem), (t.typbasetype)) u(oid)
                           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
                       GROUP BY en.enumtypid) e), '[]'::jsonb)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND (%(name)s::text IS NULL OR c.relname = %(name)s)
ORDER BY c.relname
"""


@dataclass(frozen=True)
class Shape:
    """What a table's rows are made of: its columns by number (`attnum`, name, type OID,
    type modifier; generated ones are not published), and the files that hold its rows
    (`relfilenode`s; a partitioned table's leaves'), which a rewrite of the table replaces
    (ALTER COLUMN TYPE, ADD COLUMN with a volatile DEFAULT; also TRUNCATE, VACUUM FULL).
    `gone`: the names (with their numbers) its columns no longer have, dropped or renamed
    since the table was first seen (`cdc.stream.followplan.carried` keeps them). `leaves`:
    a partitioned table's leaf partitions (OIDs). `labels`: the labels of the enum types
    its columns hold (directly, in arrays, under a domain), by type OID, in their order: a
    label renamed changes every row that holds it, with no change streamed."""

    columns: tuple[tuple[int, str, int, int], ...] = ()
    storage: tuple[int, ...] = ()
    gone: tuple[tuple[int, str], ...] = ()
    leaves: tuple[int, ...] = ()
    labels: tuple[tuple[int, tuple[str, ...]], ...] = ()

    def to_json(self) -> str:
        return json.dumps({"columns": self.columns, "storage": self.storage, "gone": self.gone,
                           "leaves": self.leaves, "labels": self.labels})  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> Shape:
        data = json.loads(text)
        return cls(
            tuple((n, name, t, m) for n, name, t, m in data["columns"]),
            tuple(data["storage"]),
            tuple((n, name) for n, name in data.get("gone", ())),
            tuple(data.get("leaves", ())),
            tuple((typ, tuple(labels)) for typ, labels in data.get("labels", ())),
        )


@dataclass(frozen=True)
class SourceTable:
    """A table of the source schema (partitions are described by their root).

    `unusable` names (quoted, qualified) the table itself, or for a partitioned table its
    leaf partitions, that have no usable replica identity. `oid` is the table's own (0: not
    known); `shape` its columns, storage and leaf partitions (empty: not known)."""

    name: str
    qualified: str
    partitioned: bool
    unlogged: bool
    identity: str
    has_primary_key: bool
    unusable: tuple[str, ...]
    oid: int = 0
    shape: Shape = Shape()

    @property
    def partitions(self) -> frozenset[int]:
        """The OIDs of a partitioned table's leaf partitions."""
        return frozenset(self.shape.leaves)


@dataclass(frozen=True)
class Exclusion:
    """Why `table` is not published, and the statement that makes it publishable."""

    table: str
    reason: str
    fix: str


def source_tables(
    conn: psycopg.Connection[Any], schema: str, name: str | None = None
) -> list[SourceTable]:
    """The tables of `schema` (partitions as their root), or the one named `name`."""
    rows = conn.execute(SOURCE_TABLES_SQL, {"schema": schema, "name": name}).fetchall()
    found = []
    for (name, qualified, partitioned, unlogged, identity, has_key, unusable, leaves, oid,
         columns, storage, labels) in rows:  # fmt: skip
        shape = Shape(tuple((n, c, t, m) for n, c, t, m in columns), tuple(storage),
                      leaves=tuple(leaves),
                      labels=tuple((typ, tuple(names)) for typ, names in labels))  # fmt: skip
        found.append(SourceTable(name, qualified, partitioned, unlogged, identity, has_key,
                                 tuple(unusable), oid, shape))  # fmt: skip
    return found


_NO_KEY_EFFECT = (
    "in a publication of updates and deletes Postgres would refuse the application's own "
    "UPDATE and DELETE on it, so it is not replicated"
)


def exclusion(table: SourceTable, publishes_changes: bool = True) -> Exclusion | None:
    """Why `table` must stay out of a publication (`publishes_changes`: one that publishes
    UPDATE or DELETE), or None when it may be published."""
    q = table.qualified
    if table.unlogged:
        return Exclusion(
            table.name,
            "unlogged: its changes are not written to the WAL, so logical replication cannot "
            "see them",
            f"ALTER TABLE {q} SET LOGGED",
        )
    if not publishes_changes or not table.unusable:
        return None
    if table.partitioned:
        leaves = ", ".join(table.unusable)
        if not table.has_primary_key:
            return Exclusion(
                table.name,
                f"partitioned without a primary key (partitions {leaves} have no usable "
                f"replica identity): {_NO_KEY_EFFECT}",
                f"ALTER TABLE {q} ADD PRIMARY KEY (...)  -- the key includes the partition key",
            )
        return Exclusion(
            table.name,
            f"partitions {leaves} have no usable replica identity: {_NO_KEY_EFFECT}",
            "; ".join(f"ALTER TABLE {leaf} REPLICA IDENTITY DEFAULT" for leaf in table.unusable),
        )
    if table.identity == "n":
        return Exclusion(
            table.name,
            f"REPLICA IDENTITY NOTHING: {_NO_KEY_EFFECT}",
            f"ALTER TABLE {q} REPLICA IDENTITY DEFAULT"
            if table.has_primary_key
            else f"ALTER TABLE {q} ADD PRIMARY KEY (...)",
        )
    if table.identity == "i":
        return Exclusion(
            table.name,
            f"its REPLICA IDENTITY USING INDEX names an index that no longer exists: "
            f"{_NO_KEY_EFFECT}",
            f"ALTER TABLE {q} REPLICA IDENTITY DEFAULT"
            if table.has_primary_key
            else f"ALTER TABLE {q} ADD PRIMARY KEY (...)",
        )
    return Exclusion(
        table.name,
        f"no primary key: {_NO_KEY_EFFECT} (REPLICA IDENTITY FULL would let Postgres publish "
        "it, but the targets keep one row per key, so a key is what makes it replicated)",
        f"ALTER TABLE {q} ADD PRIMARY KEY (...)",
    )


def logged_only(table: SourceTable) -> bool:
    """Replicated as an append-only log (inserts and truncates): it has no usable replica
    identity, is written to the WAL, and is not partitioned."""
    return bool(table.unusable) and not table.unlogged and not table.partitioned


def classify(
    tables: list[SourceTable],
) -> tuple[list[SourceTable], list[SourceTable], list[Exclusion]]:
    """The tables for the publication of every change, those replicated as append-only
    logs, and the exclusions of the others."""
    keyed: list[SourceTable] = []
    logs: list[SourceTable] = []
    excluded: list[Exclusion] = []
    for table in tables:
        why = exclusion(table)
        if why is None:
            keyed.append(table)
        elif logged_only(table):
            logs.append(table)
        else:
            excluded.append(why)
    return keyed, logs, excluded


def changes_not_replicated(qualified: str) -> tuple[str, str]:
    """What to tell the operator when an append-only log is updated or deleted from at the
    source: what happens, and the fix."""
    return (
        f"{qualified} has no primary key, so it is replicated as an append-only log: its "
        "inserts and truncates are, its UPDATE and DELETE are not (the targets keep the rows "
        "as inserted)",
        f"ALTER TABLE {qualified} ADD PRIMARY KEY (...), then give it keyed targets: "
        "docs/architecture.md, 'What is replicated, by table kind'",
    )


def split(
    tables: list[SourceTable], publishes_changes: bool = True
) -> tuple[list[SourceTable], list[Exclusion]]:
    """The tables that may be published, and the exclusions of the others."""
    eligible: list[SourceTable] = []
    excluded: list[Exclusion] = []
    for table in tables:
        why = exclusion(table, publishes_changes)
        if why is None:
            eligible.append(table)
        else:
            excluded.append(why)
    return eligible, excluded

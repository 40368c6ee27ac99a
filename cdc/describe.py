"""The catalog lookups that build a `TableSchema`.

`describe_relation` builds it for the change stream, where the Relation message is
authoritative for columns and types; `describe_table` builds it from the catalog alone,
for backfill, verify and the schema follower.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Final

import psycopg

from cdc.errors import CdcError, ErrorKind
from cdc.protocol.messages import Relation
from cdc.protocol.tags import ReplicaIdentity
from cdc.schema import OWN_COLUMNS, Column, TableSchema, TypeKind

_TYPTYPE_KINDS: Final = {
    "b": TypeKind.BASE,
    "e": TypeKind.ENUM,
    "d": TypeKind.DOMAIN,
    "c": TypeKind.COMPOSITE,
    "r": TypeKind.RANGE,
    "m": TypeKind.RANGE,
}


# Each (oid, typmod) a column uses, followed through array elements and domain bases.
_TYPES_SQL: Final = """
WITH RECURSIVE t(oid, typmod) AS (
    SELECT * FROM unnest(%(oids)s::oid[], %(typmods)s::int4[])
  UNION
    SELECT CASE WHEN p.typtype = 'd' THEN p.typbasetype ELSE p.typelem END,
           CASE WHEN p.typtype = 'd' THEN p.typtypmod ELSE t.typmod END
    FROM t JOIN pg_type p ON p.oid = t.oid
    WHERE p.typtype = 'd'
       OR EXISTS (SELECT 1 FROM pg_type e WHERE e.oid = p.typelem AND e.typarray = p.oid)
)
SELECT t.oid, t.typmod,
       CASE WHEN n.nspname <> 'pg_catalog' AND pg_type_is_visible(t.oid)
            THEN quote_ident(n.nspname) || '.' ELSE '' END || format_type(t.oid, t.typmod),
       p.typtype,
       EXISTS (SELECT 1 FROM pg_type e WHERE e.oid = p.typelem AND e.typarray = p.oid),
       p.typelem, p.typbasetype, p.typtypmod
FROM t LEFT JOIN pg_type p ON p.oid = t.oid LEFT JOIN pg_namespace n ON n.oid = p.typnamespace
"""

# Catalog facts for the Relation's columns, matched by name; NULLs when the table or
# column no longer exists. Positions are 0-based in the primary key / identity index.
# A column's missing value: the text of the one element of `attmissingval` (an array of
# the column's type, an array column's too: its element's text is then that array's).
_MISSING: Final = "CASE WHEN a.atthasmissing THEN (a.attmissingval::text::text[])[1] END"
_RELATION_SQL: Final = f"""
SELECT a.attnotnull, a.attndims, pk.pos, ri.pos, {_MISSING}
FROM unnest(%(names)s::text[]) WITH ORDINALITY AS c(name, ord)
LEFT JOIN pg_attribute a
       ON a.attrelid = %(relid)s::oid AND a.attname = c.name AND a.attnum > 0
      AND NOT a.attisdropped
LEFT JOIN pg_index p ON p.indrelid = %(relid)s::oid AND p.indisprimary
LEFT JOIN pg_index r ON r.indrelid = %(relid)s::oid AND r.indisreplident
LEFT JOIN LATERAL (SELECT array_position(p.indkey::int2[], a.attnum) AS pos) pk
       ON pk.pos < p.indnkeyatts
LEFT JOIN LATERAL (SELECT array_position(r.indkey::int2[], a.attnum) AS pos) ri
       ON ri.pos < r.indnkeyatts
ORDER BY c.ord
"""

_TABLE_SQL: Final = f"""
SELECT c.relreplident, a.attname, a.atttypid, a.atttypmod, a.attnotnull, a.attndims,
       pk.pos, ri.pos, {_MISSING}, a.attgenerated <> '', c.relkind = 'p'
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_index p ON p.indrelid = c.oid AND p.indisprimary
LEFT JOIN pg_index r ON r.indrelid = c.oid AND r.indisreplident
LEFT JOIN LATERAL (SELECT array_position(p.indkey::int2[], a.attnum) AS pos) pk
       ON pk.pos < p.indnkeyatts
LEFT JOIN LATERAL (SELECT array_position(r.indkey::int2[], a.attnum) AS pos) ri
       ON ri.pos < r.indnkeyatts
WHERE n.nspname = %(schema)s AND c.relname = %(name)s AND c.relkind IN ('r', 'p')
ORDER BY a.attnum
"""

_TypeRow = tuple[str, str | None, bool, int, int, int]


def _type_rows(
    conn: psycopg.Connection[Any], pairs: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], _TypeRow]:
    rows = conn.execute(
        _TYPES_SQL,
        {"oids": [oid for oid, _ in pairs], "typmods": [typmod for _, typmod in pairs]},
    ).fetchall()
    return {(row[0], row[1]): tuple(row[2:]) for row in rows}


def _build_column(
    types: dict[tuple[int, int], _TypeRow],
    name: str,
    oid: int,
    typmod: int,
    nullable: bool,
    dimensions: int,
) -> Column:
    pg_type, typtype, is_array, elem, basetype, basetypmod = types[(oid, typmod)]
    if typtype is None:
        raise CdcError(ErrorKind.SCHEMA, f"column {name!r}: type OID {oid} no longer exists")
    if is_array:
        element = _build_column(types, name, elem, typmod, True, 1)
        for _ in range(max(dimensions, 1) - 1):
            element = Column(name, oid, typmod, pg_type, True, TypeKind.ARRAY, element=element)
        return Column(name, oid, typmod, pg_type, nullable, TypeKind.ARRAY, element=element)
    if typtype == "d":
        base = _build_column(types, name, basetype, basetypmod, nullable, dimensions)
        return Column(name, oid, typmod, pg_type, nullable, TypeKind.DOMAIN, base_type=base)
    kind = _TYPTYPE_KINDS.get(typtype, TypeKind.OTHER)
    return Column(name, oid, typmod, pg_type, nullable, kind)


def choose_key(
    qualified: str,
    identity: str,
    primary: Sequence[tuple[int, str]],
    identity_key: Sequence[tuple[int, str]],
) -> tuple[str, ...]:
    """The key the targets version rows by, () for an append-only log, or an error saying
    what to do.

    With REPLICA IDENTITY USING INDEX, the index: deletes carry only its columns. Else
    the primary key. A DEFAULT identity with key columns but no primary key in the
    catalog means the table is gone: the Relation's key flags are its primary key then.
    A table without a usable identity is published for inserts and truncates only
    (`cdc.stream.eligibility`): an append-only log, its rows identified by their versions. A table
    with REPLICA IDENTITY FULL and no primary key is published with its updates and
    deletes, which the targets could not key: refused.
    """
    if identity == ReplicaIdentity.INDEX and identity_key:
        return tuple(name for _, name in sorted(identity_key))
    if primary:
        return tuple(name for _, name in sorted(primary))
    if identity == ReplicaIdentity.DEFAULT and identity_key:
        return tuple(name for _, name in sorted(identity_key))
    if identity != ReplicaIdentity.FULL:
        return ()
    raise CdcError(
        ErrorKind.NO_KEY,
        f"table {qualified} has no primary key (REPLICA IDENTITY FULL, which does not give "
        f"the targets a key); the targets version rows by key: add one with ALTER TABLE "
        f"{qualified} ADD PRIMARY KEY (...), or use REPLICA IDENTITY USING INDEX on a unique "
        "index of NOT NULL columns",
    )


def _table_schema(
    schema: str, name: str, identity: str, columns: list[Column], key: tuple[str, ...]
) -> TableSchema:
    taken = [c.name for c in columns if c.name in OWN_COLUMNS]
    if taken:
        raise CdcError(
            ErrorKind.UNSUPPORTED_TABLE,
            f"{schema}.{name}: column(s) {', '.join(taken)} have the names of the columns "
            f"the targets add to every table ({', '.join(OWN_COLUMNS)}: the row's version, "
            "deletion and commit time): rename them at the source "
            f"(ALTER TABLE {schema}.{name} RENAME COLUMN ...)",
            table=(schema, name),
        )
    columns = [replace(c, nullable=False) if c.name in key else c for c in columns]
    return TableSchema(schema, name, tuple(columns), key, ReplicaIdentity(identity))


def describe_relation(conn: psycopg.Connection[Any], relation: Relation) -> TableSchema:
    """The table as the change stream sees it: columns and types from `relation`,
    nullability and primary key from the catalog where the table and column still exist."""
    names = [column.name for column in relation.columns]
    facts = conn.execute(_RELATION_SQL, {"names": names, "relid": relation.oid}).fetchall()
    types = _type_rows(conn, [(c.type_oid, c.type_modifier) for c in relation.columns])
    columns: list[Column] = []
    primary: list[tuple[int, str]] = []
    catalog_identity: list[tuple[int, str]] = []
    for rel_column, (notnull, dims, pk_pos, ri_pos, missing) in zip(
        relation.columns, facts, strict=True
    ):
        column = _build_column(
            types,
            rel_column.name,
            rel_column.type_oid,
            rel_column.type_modifier,
            not notnull,
            dims or 1,
        )
        columns.append(column if missing is None else replace(column, missing=missing.encode()))
        if pk_pos is not None:
            primary.append((pk_pos, rel_column.name))
        if ri_pos is not None:
            catalog_identity.append((ri_pos, rel_column.name))
    # The Relation's key flags say which columns; the catalog's index, when it still has
    # the same columns, says in which order (as describe_table does).
    flagged = [(i, c.name) for i, c in enumerate(relation.columns) if c.is_key]
    same = {name for _, name in catalog_identity} == {name for _, name in flagged}
    identity_key = catalog_identity if same else flagged
    qualified = f"{relation.namespace}.{relation.name}"
    key = choose_key(qualified, relation.replica_identity, primary, identity_key)
    return _table_schema(relation.namespace, relation.name, relation.replica_identity, columns, key)


def describe_table(conn: psycopg.Connection[Any], schema: str, name: str) -> TableSchema:
    """The table as the catalog describes it now (for backfill): the columns the change
    stream carries, so not generated ones (pgoutput leaves them out)."""
    rows = conn.execute(_TABLE_SQL, {"schema": schema, "name": name}).fetchall()
    if not rows:
        raise CdcError(ErrorKind.SCHEMA, f"table {schema}.{name} does not exist")
    types = _type_rows(conn, [(row[2], row[3]) for row in rows])
    columns: list[Column] = []
    primary: list[tuple[int, str]] = []
    identity_key: list[tuple[int, str]] = []
    for _, attname, oid, typmod, notnull, dims, pk_pos, ri_pos, missing, generated, _ in rows:
        if generated:  # not published: the stream never carries it, so neither does a copy
            if pk_pos is not None or ri_pos is not None:
                raise CdcError(
                    ErrorKind.UNSUPPORTED_TABLE,
                    f"{schema}.{name}: key column {attname!r} is generated, and Postgres does "
                    "not publish generated columns: key the table by columns it stores "
                    "as written",
                    table=(schema, name),
                )
            continue
        column = _build_column(types, attname, oid, typmod, not notnull, dims or 1)
        columns.append(column if missing is None else replace(column, missing=missing.encode()))
        if pk_pos is not None:
            primary.append((pk_pos, attname))
        if ri_pos is not None:
            identity_key.append((ri_pos, attname))
    identity = rows[0][0]
    key = choose_key(f"{schema}.{name}", identity, primary, identity_key)
    return replace(_table_schema(schema, name, identity, columns, key), partitioned=rows[0][-1])

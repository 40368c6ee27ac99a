"""The table model: columns, their types (resolved through arrays and domains), the key.

A `TableSchema` describes one source table as the targets need it: every column with its
Postgres type, nullability, and the key the targets version rows by. `cdc.describe` builds
it from the catalog. Type texts are schema-qualified for every type outside `pg_catalog`,
so they can be used in DDL on another connection.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from psycopg import sql

VERSION_COLUMN: Final = "_version"
DELETED_COLUMN: Final = "_is_deleted"
# The commit time of the source transaction that wrote the row (UTC); NULL for a row
# copied at a snapshot (its last change is older than the copy).
COMMIT_TIME_COLUMN: Final = "_commit_time"
TRUNCATIONS_TABLE: Final = "_cdc_truncations"
CURRENT_VIEW_SUFFIX: Final = "_current"


class TypeKind(enum.Enum):
    BASE = "base"
    ENUM = "enum"
    ARRAY = "array"
    DOMAIN = "domain"
    COMPOSITE = "composite"
    RANGE = "range"  # ranges and multiranges
    OTHER = "other"  # pseudo-types and anything unknown


@dataclass(frozen=True)
class Column:
    """One column. `pg_type` is `format_type()` text, e.g. 'numeric(10,2)', 'director.status'.

    `element` (arrays): the element's type info. A column declared with N dimensions
    (`pg_attribute.attndims`, e.g. `integer[][]`) nests N array levels; undeclared is one.
    `base_type` (domains): the domain's base type, resolved recursively.
    """

    name: str
    type_oid: int
    type_modifier: int
    pg_type: str
    nullable: bool
    kind: TypeKind
    element: Column | None = None
    base_type: Column | None = None
    # What rows written before the column was added hold (the text of Postgres' "missing
    # value", from `ADD COLUMN ... DEFAULT <constant>`); None: NULL.
    missing: bytes | None = None


@dataclass(frozen=True)
class TableSchema:
    """A source table. Key columns are never nullable.

    A table without a key (`primary_key == ()`) is an append-only log: it is published for
    inserts and truncates only, and each row is identified by its `_version` alone."""

    schema: str
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    replica_identity: str
    # Partitioned: its rows are its partitions'. Another table is read without the rows of
    # its inheritance children (`source_relation`), which are tables of their own.
    partitioned: bool = False

    def __post_init__(self) -> None:
        names = [column.name for column in self.columns]
        for key in self.primary_key:
            if key not in names:
                raise ValueError(f"key column {key!r} is not a column of {self.qualified_name}")
            if self.column(key).nullable:
                raise ValueError(f"key column {key!r} of {self.qualified_name} is nullable")

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def append_only(self) -> bool:
        return not self.primary_key

    @property
    def target_key(self) -> tuple[str, ...]:
        """The targets' key: the primary key, or for an append-only log `_version`."""
        return self.primary_key or (VERSION_COLUMN,)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @property
    def key_indexes(self) -> tuple[int, ...]:
        """Positions in `columns` of the key columns, in key order."""
        names = self.column_names
        return tuple(names.index(key) for key in self.primary_key)

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.qualified_name} has no column {name!r}")


# The columns the targets add to every table: a source column of one of these names
# cannot be held beside them.
OWN_COLUMNS: Final = (VERSION_COLUMN, DELETED_COLUMN, COMMIT_TIME_COLUMN)


def source_relation(
    table: TableSchema, schema: str | None = None, name: str | None = None
) -> sql.Composed:
    """`table` (or `schema.name`: its copy, a view of it) in a FROM clause: a partitioned
    table with its partitions' rows; another `ONLY`, without the rows of its inheritance
    children (tables of their own: published, copied and compared apart)."""
    relation = sql.Identifier(schema or table.schema, name or table.name)
    return sql.SQL("{}" if table.partitioned else "ONLY {}").format(relation)

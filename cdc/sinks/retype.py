"""Which column type changes at the source the targets follow by themselves: pure rules.

A change is followed when it widens the type, so that every value of the old type has
one value of the new type, the one Postgres' own conversion gives (`ALTER COLUMN ...
TYPE` without `USING`), and its text is the old value's text read as the new type (rows
streamed before the change, still in a batch, are written with their old texts):

| from                        | to                                                   |
|-----------------------------|------------------------------------------------------|
| smallint, integer, bigint   | a wider integer; numeric with room for its digits    |
| numeric(p,s)                | numeric with at least as many integer and fraction digits; numeric |
| varchar(n), varchar, text   | varchar(m >= n), varchar, text                       |
| timestamp(p), timestamptz(p)| the same with a higher precision, or none            |

Changed back the other way (bigint -> integer, varchar(20) -> varchar(5)), the targets keep
their wider type, which holds every value; so do rows streamed before a change the targets
already followed, when a restart replays them. Anything else (another kind of type,
float4 -> float8 whose text changes, a change of an array's or a domain's type) sets the
table aside with the fix. ClickHouse follows the same changes in its own types
(`clickhouse_widens`): integers to wider integers or Decimals, Decimals to wider ones;
the other followed changes leave its type as it is (String, DateTime64(6)).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Final

from cdc.errors import CdcError, ErrorKind, rebuild_steps
from cdc.schema import Column, TableSchema
from cdc.sinks.clickhouse.types import PgType, decimal_digits

PgTypeRef = tuple[int, int]  # (type OID, type modifier)

TEXT_OID: Final = 25
VARCHAR_OID: Final = 1043
_VARHDRSZ: Final = 4  # added by Postgres to varchar's length in its typmod
_INTEGER_DIGITS: Final[dict[int, int]] = {PgType.INT2: 5, PgType.INT4: 10, PgType.INT8: 19}
_TIMESTAMPS: Final = (PgType.TIMESTAMP, PgType.TIMESTAMPTZ)
_CH_INTEGER_DIGITS: Final = {"Int16": 5, "Int32": 10, "Int64": 19}
_CH_DECIMAL: Final = re.compile(r"Decimal\((\d+), ?(\d+)\)")


def _decimal_room(type_modifier: int) -> tuple[int, int]:
    """(integer digits, fraction digits) a numeric of `type_modifier` holds."""
    precision, scale = decimal_digits(type_modifier)
    return precision - scale, scale


def widens(old: PgTypeRef, new: PgTypeRef) -> bool:
    """Whether a type `old` changed to `new` is followed (see the module); arrays, enums,
    domains and composites only when unchanged."""
    (old_oid, old_mod), (new_oid, new_mod) = old, new
    if old == new:
        return True
    if old_oid in _INTEGER_DIGITS:
        if new_oid in _INTEGER_DIGITS:
            return _INTEGER_DIGITS[new_oid] >= _INTEGER_DIGITS[old_oid]
        if new_oid == PgType.NUMERIC:
            return new_mod < 0 or _decimal_room(new_mod)[0] >= _INTEGER_DIGITS[old_oid]
        return False
    if old_oid == PgType.NUMERIC == new_oid:
        if new_mod < 0:
            return True
        if old_mod < 0:
            return False
        (old_int, old_frac), (new_int, new_frac) = _decimal_room(old_mod), _decimal_room(new_mod)
        return new_int >= old_int and new_frac >= old_frac
    if old_oid in (TEXT_OID, VARCHAR_OID) and new_oid in (TEXT_OID, VARCHAR_OID):
        unbounded_old = old_oid == TEXT_OID or old_mod < 0
        if new_oid == TEXT_OID or new_mod < 0:
            return True
        return not unbounded_old and new_mod - _VARHDRSZ >= old_mod - _VARHDRSZ
    if old_oid in _TIMESTAMPS and new_oid == old_oid:
        return new_mod < 0 or (old_mod >= 0 and new_mod >= old_mod)
    return False


def type_ref(column: Column) -> PgTypeRef:
    return column.type_oid, column.type_modifier


def clickhouse_widens(old: str, new: str) -> bool:
    """Whether ClickHouse type `old` changed to `new` is followed (`MODIFY COLUMN`, whose
    conversion keeps every value): the same Nullable wrapping, and an integer to a wider
    integer or a Decimal with room for it, or a Decimal to a wider one."""
    if old == new:
        return True
    old_base, old_nullable = _unwrap(old)
    new_base, new_nullable = _unwrap(new)
    if old_nullable != new_nullable:
        return False
    old_room = _ch_room(old_base)
    new_room = _ch_room(new_base)
    if old_room is None or new_room is None:
        return False
    if old_base in _CH_INTEGER_DIGITS and new_base in _CH_INTEGER_DIGITS:
        return new_room[0] >= old_room[0]
    if new_base in _CH_INTEGER_DIGITS:
        return False  # a Decimal never becomes an integer
    return new_room[0] >= old_room[0] and new_room[1] >= old_room[1]


def _unwrap(ch_type: str) -> tuple[str, bool]:
    if ch_type.startswith("Nullable(") and ch_type.endswith(")"):
        return ch_type[len("Nullable(") : -1], True
    return ch_type, False


def _ch_room(base: str) -> tuple[int, int] | None:
    """(integer digits, fraction digits) of a ClickHouse integer or Decimal type."""
    if base in _CH_INTEGER_DIGITS:
        return _CH_INTEGER_DIGITS[base], 0
    match = _CH_DECIMAL.fullmatch(base)
    if match is None:
        return None
    precision, scale = int(match[1]), int(match[2])
    return precision - scale, scale


def refused(table: TableSchema, column: str, pg_type: str) -> CdcError:
    """The error that sets aside `table`, whose `column` changed to `pg_type` in a way the
    targets do not follow (`widens`)."""
    return CdcError(
        ErrorKind.TABLE_CHANGED,
        f"column {column!r} of {table.qualified_name} changed type at the source (now "
        f"{pg_type}) in a way the targets do not follow (they follow widenings: "
        "integer -> bigint or numeric, wider numeric, longer varchar or text, finer "
        f"timestamp). {rebuild_steps()}",
        table=(table.schema, table.name),
    )


def require_key(table: TableSchema, target: str, keyed_by: Collection[str]) -> None:
    """Set aside `table` if its key (`target_key`) is not the one its `target` table is
    keyed by (`keyed_by`; none known: not judged): its primary key changed, or it gained
    or lost one. A target cannot be keyed again in place: its rows are kept by the old key."""
    if not keyed_by or frozenset(keyed_by) == frozenset(table.target_key):
        return
    raise CdcError(
        ErrorKind.TABLE_CHANGED,
        f"{table.qualified_name} is now keyed by ({', '.join(table.target_key)}) but its "
        f"copy {target} by ({', '.join(sorted(keyed_by))}): its primary key changed, or it "
        f"gained or lost one. {rebuild_steps()}",
        table=(table.schema, table.name),
    )

"""What verify finds: differences per key between the source and a target, and the report.

Pure: no database. `classify` matches the source's rows of one key range with a target's;
`TableResult` gathers a table's drift; `report` renders it for people.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from rich.table import Table

from cdc.check.keyrange import Key, KeyRange
from cdc.schema import TableSchema
from cdc.versions import commit_lsn_of

SAMPLE_KEYS: Final = 5  # keys named per target and kind

Ident = tuple[str, ...]  # a key's canonical texts: equal in every store


class Target(enum.Enum):
    HISTORIC = "historic"
    CLICKHOUSE = "clickhouse"


class WalPosition(enum.Enum):
    """The source's WAL positions, as the functions that read them."""

    FLUSHED = "pg_current_wal_flush_lsn"  # a commit becomes visible only once flushed
    WRITTEN = "pg_current_wal_lsn"  # past the commit of every transaction a read saw
    INSERTED = "pg_current_wal_insert_lsn"  # past every commit record written so far


class DiffKind(enum.Enum):
    MISSING = "missing"  # at the source, not live in the target
    EXTRA = "extra"  # live in the target, not at the source
    CHANGED = "changed"  # in both, with different values


class SourceRow(NamedTuple):
    key: Key
    hashes: tuple[int, int]  # of the row as it is; as ClickHouse holds it


class TargetRow(NamedTuple):
    key: Key
    hash: int
    version: int
    live: bool


class KeyDiff(NamedTuple):
    target: Target
    kind: DiffKind
    ident: Ident
    key: Key
    in_flight: bool  # the target row is newer than the source read


def classify(
    target: Target,
    source: Mapping[Ident, SourceRow],
    rows: Mapping[Ident, TargetRow],
    window: tuple[int, int],
) -> list[KeyDiff]:
    """The keys of one range that differ between the source and `target`. A difference is
    in flight when the target row's commit LSN lies in `window`: from before the source
    read began to after the target read ended."""
    which = 0 if target is Target.HISTORIC else 1
    diffs = []
    for ident in sorted(source.keys() | rows.keys()):
        src, row = source.get(ident), rows.get(ident)
        live = row is not None and row.live
        if src is not None and not live:
            kind = DiffKind.MISSING
        elif src is None and live:
            kind = DiffKind.EXTRA
        elif src is not None and row is not None and src.hashes[which] != row.hash:
            kind = DiffKind.CHANGED
        else:
            continue
        key = src.key if src is not None else rows[ident].key
        in_flight = row is not None and window[0] <= commit_lsn_of(row.version) <= window[1]
        diffs.append(KeyDiff(target, kind, ident, key, in_flight))
    return diffs


@dataclass
class TableResult:
    """What verifying one table found: the drift per piece (a key range), and caveats."""

    table: TableSchema
    ranges: int
    source_rows: int | None  # None: only pieces were re-checked
    targets: tuple[Target, ...]
    drift: dict[KeyRange, list[KeyDiff]] = field(default_factory=dict)  # per piece
    in_flight: int = 0  # differences explained by changes newer than the source read
    unconfirmed: str | None = None  # why drift could not be confirmed as such
    clickhouse_skipped: str | None = None
    failed: str | None = None  # why the table could not be compared (the others were)

    @property
    def clean(self) -> bool:
        return not self.drift and self.failed is None

    def diffs(self, target: Target) -> list[KeyDiff]:
        return [d for diffs in self.drift.values() for d in diffs if d.target is target]

    def differing_ranges(self, target: Target) -> int:
        return len(
            {
                rng.root
                for rng, diffs in self.drift.items()
                if any(d.target is target for d in diffs)
            }
        )


def all_clean(results: Sequence[TableResult], repaired: Sequence[TableResult]) -> bool:
    """Whether every table agrees (after its repair, when it was repaired)."""
    fixed = {r.table.qualified_name: r for r in repaired}
    return all(fixed.get(r.table.qualified_name, r).clean for r in results)


def key_text(key: Key) -> str:
    return "(" + ", ".join(key) + ")"


def document(result: TableResult) -> dict[str, Any]:
    """`result` for `cdc verify --json`: per target, its differing keys by kind (each key
    as its columns' texts), or why it was not compared."""
    targets: dict[str, Any] = {}
    for target in Target:
        if result.failed is not None:
            targets[target.value] = {"compared": False, "reason": result.failed}
            continue
        if target not in result.targets:
            targets[target.value] = {"compared": False, "reason": result.clickhouse_skipped}
            continue
        diffs = result.diffs(target)
        targets[target.value] = {
            "compared": True,
            "differing_ranges": result.differing_ranges(target),
            **{kind.value: [list(d.key) for d in diffs if d.kind is kind] for kind in DiffKind},
            "status": "equal" if not diffs else "unconfirmed" if result.unconfirmed else "drift",
        }
    return {
        "table": result.table.qualified_name,
        "clean": result.clean,
        "ranges": result.ranges,
        "source_rows": result.source_rows,
        "in_flight": result.in_flight,
        "unconfirmed": result.unconfirmed,
        "error": result.failed,
        "targets": targets,
    }


def report(result: TableResult, heading: str) -> tuple[Table, list[str]]:
    """A table of counts per target, and lines naming sample keys and caveats."""
    rows = f", {result.source_rows} source rows" if result.source_rows is not None else ""
    table = Table(
        "target",
        "ranges",
        "differing",
        "missing",
        "extra",
        "changed",
        "status",
        title=f"{heading} {result.table.qualified_name}: {result.ranges} ranges{rows}",
        title_justify="left",
    )
    notes: list[str] = []
    if result.failed is not None:
        for target in Target:
            table.add_row(target.value, *["-"] * 5, "error")
        return table, [f"error: {result.failed}"]
    for target in Target:
        if target not in result.targets:
            table.add_row(target.value, *["-"] * 5, "not compared")
            notes.append(f"{target.value} not compared: {result.clickhouse_skipped}")
            continue
        diffs = result.diffs(target)
        counts = {kind: [d.key for d in diffs if d.kind is kind] for kind in DiffKind}
        status = "equal" if not diffs else "unconfirmed" if result.unconfirmed else "drift"
        table.add_row(
            target.value,
            str(result.ranges),
            str(result.differing_ranges(target)),
            *(str(len(counts[kind])) for kind in DiffKind),
            status,
        )
        for kind, keys in counts.items():
            if keys:
                more = f" and {len(keys) - SAMPLE_KEYS} more" if len(keys) > SAMPLE_KEYS else ""
                sample = ", ".join(key_text(k) for k in keys[:SAMPLE_KEYS])
                notes.append(f"{target.value} {kind.value}: {sample}{more}")
    if result.in_flight:
        notes.append(
            f"{result.in_flight} differences were changes newer than the source read "
            "(in flight), not drift"
        )
    if result.unconfirmed:
        notes.append(f"unconfirmed: {result.unconfirmed}")
    return table, notes

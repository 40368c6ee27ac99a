"""Verify that historic and ClickHouse hold exactly the source's rows; name and repair drift.

Method: each table is split into key ranges (every `range_size`-th source key, in an order
both engines share). Per range, each store computes `count(*)` and `sum(row hash)` itself
(`cdc.check.rowhash`), so a range that agrees costs one small query per store and no rows move.
A range that differs is split again (an eighth of its rows per piece) until a piece holds
at most `LEAF_ROWS` source rows; for those pieces keys and row hashes are fetched and
matched: missing in a target, extra in a target, or changed.

Changes in flight are not drift. Before the targets are read for a re-check, verify waits
(bounded) until the slot's `confirmed_flush_lsn` has passed the WAL position noted right
after the source read: the daemon has then applied everything that read saw. A target row
whose `_version` was committed at or after the WAL flush position noted before the source
read is newer than that read (a commit becomes visible only once flushed) and does not
count. Pieces are compared key by key up to `MAX_CHECKS` times; what still differs is
drift, "unconfirmed" when the slot could not confirm that the daemon had caught up.

Repair (`cdc.check.repair`) copies the source rows of each differing range into both
targets again at a fresh snapshot; the repaired ranges are verified again.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

import psycopg

from cdc.check.drift import KeyDiff, TableResult, WalPosition, classify
from cdc.check.keyrange import KeyRange, ranges_between
from cdc.check.repair import repair_drift
from cdc.check.stores import TableStores, connect
from cdc.errors import CdcError, ErrorKind
from cdc.load.planning import published_schemas
from cdc.ops import status
from cdc.ops.settings import Settings
from cdc.schema import TableSchema
from cdc.sinks.clickhouse import client as clickhouse
from cdc.sinks.factory import SinkFactory, default_sinks
from cdc.stream.session import canonical_dsn
from cdc.stream.slots import SlotWatch

MAX_CHECKS: Final = 3  # key comparisons per differing range
# Why an append-only log is not compared.
LOG_NOT_COMPARED: Final = "no key to compare ranges of; `cdc backfill` copies it again whole"


class Verifier:
    """Verifies (and repairs) tables; open with `with`, it holds one connection per store."""

    def __init__(
        self,
        settings: Settings,
        *,
        range_size: int = 10_000,
        wait_s: float = 30.0,
        clickhouse_client: Any = None,
        sink_factory: SinkFactory | None = None,
    ) -> None:
        """`clickhouse_client` and `sink_factory`: read and repair through these (the
        daemon's), instead of a client and sinks of its own."""
        self.settings = settings
        self.range_size = range_size
        self.wait_s = wait_s
        self.source_dsn = canonical_dsn(settings.require_source_dsn())
        self.historic_dsn = canonical_dsn(settings.require_historic_dsn())
        self.sink_factory = sink_factory or default_sinks(settings)
        self._source: psycopg.Connection[Any] | None = None
        self._historic: psycopg.Connection[Any] | None = None
        self._given_ch = clickhouse_client
        self._ch: Any = None

    def __enter__(self) -> Verifier:
        try:
            self._source = connect(self.source_dsn, ErrorKind.SOURCE_CONNECTION)
            self._historic = connect(self.historic_dsn, ErrorKind.SINK_CONNECTION)
            self._ch = self._given_ch or clickhouse.connect(self.settings.require_clickhouse_url())
        except BaseException:
            self.close()
            raise
        self.watch = SlotWatch(self._source, self.settings.slot, self.wait_s)
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        for conn in (self._source, self._historic):
            if conn is not None:
                conn.close()
        if self._ch is not None and self._ch is not self._given_ch:
            self._ch.close()
        self._source = self._historic = self._ch = None

    def stores(self, table: TableSchema) -> TableStores:
        assert self._source is not None and self._historic is not None
        return TableStores(
            table,
            self._source,
            self._historic,
            self.settings.historic_schema,
            self._ch,
            self.settings.clickhouse_database,
            self.settings.clickhouse_cluster is not None,
        )

    def tables(self, names: Sequence[str]) -> tuple[list[TableSchema], list[str]]:
        """The published tables to compare (all, or `names`): keyed ones only, as ranges
        are key ranges; and the names of the append-only logs left out."""
        assert self._source is not None
        found = published_schemas(self._source, self.settings.publication, names)
        named = sorted(t.name for t in found if t.append_only and t.name in names)
        if named:
            raise CdcError(
                ErrorKind.CONFIG,
                f"{', '.join(named)}: an append-only log has {LOG_NOT_COMPARED}",
            )
        logs = sorted(t.name for t in found if t.append_only)
        return [t for t in found if not t.append_only], logs

    def set_aside(self) -> dict[str, str]:
        """The tables the daemon set aside (recorded quarantined), with why: their targets
        are known not to follow the source until the fix the reason names."""
        assert self._historic is not None
        return status.read_set_aside(self._historic, self.settings.historic_schema)

    # -- checking ---------------------------------------------------------------------------

    def verify(self, stores: TableStores) -> TableResult:
        """Compare the whole table."""
        bounds = stores.boundaries(KeyRange(None, None), self.range_size)
        ranges = [
            KeyRange(r.lower, r.upper, i) for i, r in enumerate(ranges_between(None, None, bounds))
        ]
        pending: list[tuple[KeyRange, int]] = []
        total = 0
        for rng in ranges:  # the first look needs no wait: most ranges agree
            source = stores.source_aggregate(rng)
            total += source[0]
            if stores.differs(rng, source):
                pending.append((rng, source[0]))
        return self._narrow(stores, pending, len(ranges), total)

    def recheck(self, stores: TableStores, pieces: Sequence[KeyRange], ranges: int) -> TableResult:
        """Compare `pieces` of a table again (after a repair)."""
        return self._narrow(stores, self._aggregate_round(stores, pieces), ranges, None)

    def _aggregate_round(
        self, stores: TableStores, ranges: Sequence[KeyRange]
    ) -> list[tuple[KeyRange, int]]:
        """The ranges that still differ once the slot has passed the source read."""
        sources = [stores.source_aggregate(rng) for rng in ranges]
        self.watch.wait_past(stores.wal(WalPosition.WRITTEN))
        return [
            (rng, source[0])
            for rng, source in zip(ranges, sources, strict=True)
            if stores.differs(rng, source)
        ]

    def _narrow(
        self,
        stores: TableStores,
        pending: list[tuple[KeyRange, int]],
        ranges: int,
        source_rows: int | None,
    ) -> TableResult:
        """Narrow the differing ranges down to small pieces, then compare those by key."""
        leaves: list[KeyRange] = []
        while pending:
            small, pieces = stores.split(pending)
            leaves += small
            pending = self._aggregate_round(stores, pieces) if pieces else []
        result = TableResult(
            stores.table,
            ranges,
            source_rows,
            stores.targets,
            clickhouse_skipped=stores.clickhouse_skipped,
        )
        self._compare_keys(stores, leaves, result)
        return result

    def _compare_keys(
        self, stores: TableStores, leaves: list[KeyRange], result: TableResult
    ) -> None:
        """Up to `MAX_CHECKS` key comparisons of the pieces; what differs at the last one,
        and is not newer than its source read, is drift."""
        last: dict[KeyRange, list[KeyDiff]] = {}
        for _ in range(MAX_CHECKS):
            if not leaves:
                break
            found, confirmed = self._key_round(stores, leaves)
            last.update(found)
            leaves = [leaf for leaf, diffs in found.items() if any(not d.in_flight for d in diffs)]
            result.unconfirmed = None if confirmed else self.watch.problem
        for leaf, diffs in last.items():
            drift = [d for d in diffs if not d.in_flight]
            result.in_flight += len(diffs) - len(drift)
            if drift:
                result.drift[leaf] = drift
        if result.clean:
            result.unconfirmed = None

    def _key_round(
        self, stores: TableStores, leaves: Sequence[KeyRange]
    ) -> tuple[dict[KeyRange, list[KeyDiff]], bool]:
        low = stores.wal(WalPosition.FLUSHED)
        sources = [stores.source_rows(leaf) for leaf in leaves]
        confirmed = self.watch.wait_past(stores.wal(WalPosition.WRITTEN))
        rows = [{t: stores.target_rows(t, leaf) for t in stores.targets} for leaf in leaves]
        window = (int(low), int(stores.wal(WalPosition.INSERTED)))
        found = {
            leaf: [d for t in stores.targets for d in classify(t, source, targets[t], window)]
            for leaf, source, targets in zip(leaves, sources, rows, strict=True)
        }
        return found, confirmed

    # -- repair -----------------------------------------------------------------------------

    def repair(self, stores: TableStores, result: TableResult) -> TableResult:
        """Copy the differing pieces again at a fresh snapshot, tombstone keys the source
        does not hold, then compare the pieces again."""
        assert self._source is not None
        pieces = repair_drift(
            stores.table,
            result,
            settings=self.settings,
            source=self._source,
            source_dsn=self.source_dsn,
            historic_dsn=self.historic_dsn,
            sink_factory=self.sink_factory,
        )
        return self.recheck(stores, pieces, len({p.root for p in pieces}))


# -- running and reporting ------------------------------------------------------------------


# Errors that stop comparing one table (a target's table no longer fits the source's, as
# after a type change the daemon did not follow), not the others.
TABLE_ERRORS: Final = frozenset({ErrorKind.SCHEMA, ErrorKind.REJECTED})


def failed(stores: TableStores, exc: CdcError) -> TableResult:
    """The result of a table that could not be compared, with what to do."""
    table = stores.table
    why = (
        f"{str(exc).rstrip('. ')}. Its targets may no longer fit the source's columns (a "
        "change the daemon set the table aside for: `cdc status` names it and the fix); "
        f"after the fix, `cdc verify {shlex.quote(table.name)}`"
    )
    return TableResult(table, 0, None, stores.targets, failed=why)


class Outcome(NamedTuple):
    """What `run` found: each table's result, the results of re-checking what was
    repaired, and the append-only logs not compared (no key to compare ranges of)."""

    results: list[TableResult]
    repaired: list[TableResult]
    not_compared: list[str]


def run(
    settings: Settings, tables: Sequence[str], *, range_size: int, wait_s: float, repair: bool
) -> Outcome:
    """Verify the published tables (or `tables`); with `repair`, repair the drift found."""
    results: list[TableResult] = []
    repaired: list[TableResult] = []
    with Verifier(settings, range_size=range_size, wait_s=wait_s) as verifier:
        aside = verifier.set_aside()
        keyed, logs = verifier.tables(tables)
        for table in keyed:
            stores = verifier.stores(table)
            if table.name in aside:
                # Not compared (nor repaired): the difference is known, and so is its fix.
                why = f"set aside by the daemon: {aside[table.name]}"
                results.append(TableResult(table, 0, None, stores.targets, failed=why))
                continue
            try:
                result = verifier.verify(stores)
            except CdcError as exc:
                if exc.kind not in TABLE_ERRORS:
                    raise
                results.append(failed(stores, exc))
                continue
            results.append(result)
            if repair and not result.clean:
                repaired.append(verifier.repair(stores, result))
    return Outcome(results, repaired, logs)

"""The drift monitor: the daemon compares source, historic and ClickHouse in the background.

A pass walks every published table with a key in ranges of the primary key, paced so
that the pass is spread over `monitor_interval_s` and never reads more than
`monitor_rows_per_s` source rows a second. Each range is one step:

1. Export a snapshot of the source (a temporary slot: its consistent point S is exact)
   and read the range's count and row-hash sum in it (`cdc.check.verify.TableStores`).
2. Write a heartbeat into the source's WAL and wait until the daemon holds everything
   committed before S (`cdc.check.position`).
3. Compare the targets' aggregates; where they differ, narrow to small pieces and compare
   key by key (`cdc.check.drift.classify`). A target row committed at or after S
   (`_version >= S << 64`) is newer than the read and is not compared now: a later pass
   sees it. Every other difference (value, presence, deletion) is drift at S.
4. Re-read the drifted pieces once at a fresh snapshot; only keys that differ in both
   reads are reported (and, with `monitor_repair`, repaired as `cdc verify --repair`
   does).

A table's drift is published when its pass ends (`cdc_drift_rows{table,target}`), and
recorded in the historic database for `cdc status` (`cdc.ops.status.record_check`). The
monitor never stops the daemon: a failed step is logged and tried again later.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg

from cdc.check.drift import SAMPLE_KEYS, KeyDiff, TableResult, Target, classify, key_text
from cdc.check.position import TargetPosition
from cdc.check.rowhash import Key, KeyRange, ranges_between
from cdc.check.verify import FANOUT, LEAF_ROWS, TableStores, Verifier
from cdc.errors import CdcError, ErrorKind
from cdc.load.planning import published_schemas
from cdc.ops import status
from cdc.ops.metrics import Metrics
from cdc.ops.settings import Settings, redact_url
from cdc.protocol.lsn import Lsn
from cdc.schema import TableSchema
from cdc.sinks.clickhouse import client as clickhouse
from cdc.sinks.factory import SinkFactory
from cdc.stream.session import canonical_dsn
from cdc.stream.snapshot import exported_snapshot, import_snapshot

STEP_SECONDS: Final = 10.0  # a step reads about this many seconds of the row budget
MAX_STEP_ROWS: Final = 100_000
STEP_COST_ROWS: Final = 1_000  # a step's fixed cost (a snapshot), counted as this many rows
WAIT_S: Final = 60.0  # a step waits this long for the daemon to pass its snapshot
RETRY_S: Final = 30.0  # pause after a failed step (at most the interval)
FIRST_PASS_S: Final = 60.0  # the first pass starts this long after the start (at most the interval)
HEARTBEAT_SQL: Final = "SELECT pg_logical_emit_message(false, %s, now()::text)"
ESTIMATE_SQL: Final = (  # the planner's row estimate, summed over a partitioned table's leaves
    "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_partition_tree(("
    "SELECT r.oid FROM pg_class r JOIN pg_namespace n ON n.oid = r.relnamespace "
    "WHERE n.nspname = %s AND r.relname = %s)) p JOIN pg_class c ON c.oid = p.relid "
    "WHERE p.isleaf"
)
Diffs = dict[KeyRange, list[KeyDiff]]


# -- pacing and comparison (pure) --------------------------------------------------------------


def step_rows(rows_per_s: int) -> int:
    """Source rows per step: a few seconds of the budget, bounded."""
    return max(LEAF_ROWS, min(MAX_STEP_ROWS, int(rows_per_s * STEP_SECONDS)))


def step_due(
    pass_started: float, rows_done: int, rows_expected: int, interval_s: float, rows_per_s: int
) -> float:
    """When the next step of a pass may start: the pass's rows spread evenly over the
    interval, and never faster than the budget. Once more rows were read than expected (a
    stale estimate), only the budget paces."""
    spread = interval_s * rows_done / rows_expected if rows_done < rows_expected else 0.0
    return pass_started + max(spread, rows_done / rows_per_s)


def paced_rows(rows: int) -> int:
    return max(rows, STEP_COST_ROWS)


def confirmed(first: Sequence[KeyDiff], second: Sequence[KeyDiff]) -> list[KeyDiff]:
    """The drift of a re-read that the first read found too (same target and key)."""
    seen = {(d.target, d.ident) for d in first if not d.in_flight}
    return [d for d in second if not d.in_flight and (d.target, d.ident) in seen]


def drift_summary(diffs: Sequence[KeyDiff]) -> list[dict[str, Any]]:
    """Per target and kind: how many rows, and up to `SAMPLE_KEYS` of their keys."""
    groups: dict[tuple[Target, str], list[KeyDiff]] = {}
    for diff in diffs:
        groups.setdefault((diff.target, diff.kind.value), []).append(diff)
    return [
        {
            "target": target.value,
            "kind": kind,
            "rows": len(found),
            "keys": [key_text(d.key) for d in found[:SAMPLE_KEYS]],
        }
        for (target, kind), found in sorted(groups.items(), key=lambda g: (g[0][0].value, g[0][1]))
    ]


@dataclass
class RangeCheck:
    """One step's outcome."""

    upper: Key | None  # where the range ended (None: the table's end)
    rows: int  # source rows in the range
    compared: bool  # False: the daemon did not pass the snapshot in time
    drift: Diffs = field(default_factory=dict)  # confirmed, per piece
    newer: int = 0  # differences newer than the snapshot: compared in a later pass

    @property
    def diffs(self) -> list[KeyDiff]:
        return [d for diffs in self.drift.values() for d in diffs]


# -- the monitor ----------------------------------------------------------------------------


class Monitor:
    """Runs passes on a thread of its own until stopped. `shared_clickhouse()` returns the
    client to read ClickHouse with (None: the monitor opens one of its own); `skip()` the
    tables set aside (quarantined)."""

    def __init__(
        self,
        settings: Settings,
        position: TargetPosition,
        metrics: Metrics,
        shared_clickhouse: Callable[[], Any] | None,
        sink_factory: SinkFactory,
        skip: Callable[[], Collection[tuple[str, str]]],
        log: Any,
        heartbeat_prefix: str,
    ) -> None:
        self.settings = settings
        self.position = position
        self.metrics = metrics
        self._shared_clickhouse = shared_clickhouse
        self._own_clickhouse: Any = None
        self.sink_factory = sink_factory
        self.skip = skip
        self.log = log.bind(component="monitor")
        self.heartbeat_prefix = heartbeat_prefix
        self.source_dsn = canonical_dsn(settings.require_source_dsn())
        self.historic_dsn = canonical_dsn(settings.require_historic_dsn())
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._source: psycopg.Connection[Any] | None = None  # reads inside snapshots
        self._control: psycopg.Connection[Any] | None = None  # catalog, heartbeats
        self._historic: psycopg.Connection[Any] | None = None
        self._newer = 0  # differences newer than their snapshot in this pass
        self._read = 0  # source rows the current step has read

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self.metrics.monitor_interval.set(self.settings.monitor_interval_s)
        self._thread = threading.Thread(target=self.run, name="cdc-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def run(self) -> None:
        interval = self.settings.monitor_interval_s
        # Right after a start the stream is catching up (or the initial load just ran):
        # the first pass would mostly wait for it.
        self.stop_event.wait(min(FIRST_PASS_S, interval))
        try:
            while not self.stop_event.is_set():
                started = time.monotonic()
                try:
                    self.run_pass()
                except (CdcError, psycopg.Error) as exc:
                    self._failed(exc)
                    self.stop_event.wait(min(RETRY_S, interval))
                    continue
                self.stop_event.wait(max(0.0, started + interval - time.monotonic()))
        except Exception as exc:  # a bug: stop monitoring, never the daemon
            self.log.exception("monitor_stopped", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._close()

    def _failed(self, exc: BaseException) -> None:
        self.log.warning("monitor_failed", error=redact_url(str(exc).strip()))
        self._close()

    # -- connections ------------------------------------------------------------------------

    @staticmethod
    def _connect(dsn: str, kind: ErrorKind) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(dsn, autocommit=True)
        except psycopg.Error as exc:
            raise CdcError(kind, f"monitor cannot connect to {redact_url(dsn)}: {exc}") from exc

    def _connections(self) -> tuple[psycopg.Connection[Any], ...]:
        if self._source is None or self._control is None or self._historic is None:
            self._close()
            self._source = self._connect(self.source_dsn, ErrorKind.SOURCE_CONNECTION)
            self._control = self._connect(self.source_dsn, ErrorKind.SOURCE_CONNECTION)
            self._historic = self._connect(self.historic_dsn, ErrorKind.SINK_CONNECTION)
            status.ensure(self._historic, self.settings.historic_schema)
        return self._source, self._control, self._historic

    def clickhouse_client(self) -> Any:
        if self._shared_clickhouse is not None:
            return self._shared_clickhouse()
        if self._own_clickhouse is None:
            self._own_clickhouse = clickhouse.connect(self.settings.require_clickhouse_url())
        return self._own_clickhouse

    def _close(self) -> None:
        for conn in (self._source, self._control, self._historic):
            if conn is not None:
                conn.close()
        self._source = self._control = self._historic = None
        if self._own_clickhouse is not None:
            self._own_clickhouse.close()
            self._own_clickhouse = None

    # -- a pass -----------------------------------------------------------------------------

    def run_pass(self) -> None:
        """Check every published table once, paced over the interval."""
        _, control, _ = self._connections()
        skipped = set(self.skip())
        tables = [
            t
            for t in published_schemas(control, self.settings.publication)
            if t.primary_key and (t.schema, t.name) not in skipped
        ]
        estimates = {t.qualified_name: paced_rows(self._estimate(control, t)) for t in tables}
        expected = sum(estimates.values())
        started = time.monotonic()
        done = 0
        self._newer = 0
        for table in tables:
            done = self._check_table(table, started, done, expected)
            if self.stop_event.is_set():
                return
        self.log.info(
            "monitor_pass_done", tables=len(tables), seconds=round(time.monotonic() - started, 1),
            newer=self._newer,
        )  # fmt: skip

    @staticmethod
    def _estimate(conn: psycopg.Connection[Any], table: TableSchema) -> int:
        row = conn.execute(ESTIMATE_SQL, (table.schema, table.name)).fetchone()
        return int(row[0]) if row else 0

    def _check_table(self, table: TableSchema, started: float, done: int, expected: int) -> int:
        """Walk `table`'s ranges; publish its drift when the walk is complete."""
        settings = self.settings
        size = step_rows(settings.monitor_rows_per_s)
        found: Counter[Target] = Counter()
        targets: tuple[Target, ...] = ()
        lower: Key | None = None
        while True:
            due = step_due(
                started, done, expected, settings.monitor_interval_s, settings.monitor_rows_per_s
            )
            if self.stop_event.wait(max(0.0, due - time.monotonic())):
                return done
            check, targets = self.check_range(table, lower, size)
            done += paced_rows(self._read)  # every source row the step read, narrowing too
            if not check.compared:
                continue  # the same range again, once the daemon has caught up
            self.metrics.monitor_rows_checked.inc(check.rows)
            self._newer += check.newer
            found.update(d.target for d in check.diffs)
            if check.drift:
                self._report(table, check, targets)
            if check.upper is None:
                break
            lower = check.upper
        name = table.qualified_name
        for target in targets:
            self.metrics.drift_rows.labels(name, target.value).set(found[target])
        self.metrics.monitor_last_pass.labels(name).set(time.time())
        drift = {target: found[target] for target in targets}  # absent: not compared
        _, _, historic = self._connections()
        status.record_check(historic, settings.historic_schema, table.name,
                            drift.get(Target.HISTORIC), drift.get(Target.CLICKHOUSE))  # fmt: skip
        return done

    # -- a step -----------------------------------------------------------------------------

    @contextmanager
    def _snapshot(self, table: TableSchema) -> Iterator[tuple[TableStores, Lsn]]:
        """The table's stores, the source read inside a fresh exported snapshot at S."""
        source, _, historic = self._connections()
        with exported_snapshot(self.settings.require_source_dsn()) as snapshot:
            import_snapshot(source, snapshot)
            try:
                stores = TableStores(
                    table,
                    source,
                    historic,
                    self.settings.historic_schema,
                    self.clickhouse_client(),
                    self.settings.clickhouse_database,
                    self.settings.clickhouse_cluster is not None,
                )
                yield stores, snapshot.lsn
            finally:
                source.execute("ROLLBACK")

    def _passed(self, lsn: Lsn) -> bool:
        """Whether the daemon holds everything committed before `lsn` (a heartbeat after
        it lets an idle stream say so at once)."""
        _, control, _ = self._connections()
        control.execute(HEARTBEAT_SQL, (self.heartbeat_prefix,))
        passed = self.position.wait_past(lsn, WAIT_S, self.stop_event.is_set)
        if not passed and not self.stop_event.is_set():
            self.log.warning(
                "monitor_waiting", lsn=str(lsn), applied=str(self.position.lsn),
                hint="the daemon has not applied the source past the monitor's snapshot",
            )  # fmt: skip
        return passed

    def check_range(
        self, table: TableSchema, lower: Key | None, size: int
    ) -> tuple[RangeCheck, tuple[Target, ...]]:
        """Compare the `size` keys after `lower`; re-read what differs once."""
        self._read = 0
        with self._snapshot(table) as (stores, lsn):
            upper = stores.next_boundary(lower, size)
            rng = KeyRange(lower, upper)
            source = stores.source_aggregate(rng)
            self._read += source[0]
            if not self._passed(lsn):
                return RangeCheck(lower, source[0], compared=False), stores.targets
            first = self._key_diffs(stores, self._differing_leaves(stores, rng, source), lsn)
        check = RangeCheck(upper, source[0], compared=True)
        check.newer = sum(d.in_flight for diffs in first.values() for d in diffs)
        drifted = {
            leaf: diffs for leaf, diffs in first.items() if any(not d.in_flight for d in diffs)
        }
        if drifted:
            with self._snapshot(table) as (stores, lsn):
                if not self._passed(lsn):
                    return check, stores.targets  # not confirmed: the next pass looks again
                second = self._key_diffs(stores, list(drifted), lsn)
            for leaf, diffs in drifted.items():
                if again := confirmed(diffs, second.get(leaf, [])):
                    check.drift[leaf] = again
        return check, stores.targets

    def _differing_leaves(
        self, stores: TableStores, rng: KeyRange, source: tuple[int, int, int]
    ) -> list[KeyRange]:
        """The pieces of `rng`, at most `LEAF_ROWS` source rows each, whose aggregates differ
        in a target (the source read in the snapshot, the targets as they are now)."""
        pending = [(rng, source[0])] if stores.differs(rng, source) else []
        leaves: list[KeyRange] = []
        while pending:
            pieces: list[KeyRange] = []
            for piece, count in pending:
                if count <= LEAF_ROWS:
                    leaves.append(piece)
                    continue
                bounds = stores.boundaries(piece, max(LEAF_ROWS, -(-count // FANOUT)))
                pieces += ranges_between(piece.lower, piece.upper, bounds, piece.root)
            pending = []
            for piece in pieces:
                aggregate = stores.source_aggregate(piece)
                self._read += aggregate[0]
                if stores.differs(piece, aggregate):
                    pending.append((piece, aggregate[0]))
        return leaves

    def _key_diffs(self, stores: TableStores, leaves: Sequence[KeyRange], lsn: Lsn) -> Diffs:
        """The keys of `leaves` that differ; those whose target row is not older than the
        snapshot (`_version >= lsn << 64`) are marked in flight."""
        newer = (int(lsn), int(Lsn.MAX))
        found: Diffs = {}
        for leaf in leaves:
            source = stores.source_rows(leaf)
            self._read += len(source)
            diffs = [
                d
                for target in stores.targets
                for d in classify(target, source, stores.target_rows(target, leaf), newer)
            ]
            if diffs:
                found[leaf] = diffs
        return found

    # -- reporting and repair ---------------------------------------------------------------

    def _report(self, table: TableSchema, check: RangeCheck, targets: tuple[Target, ...]) -> None:
        for group in drift_summary(check.diffs):
            self.log.warning("drift_detected", table=table.qualified_name, **group)
        if not self.settings.monitor_repair:
            return
        result = TableResult(table, 1, None, targets, drift=dict(check.drift))
        with Verifier(
            self.settings,
            wait_s=WAIT_S,
            clickhouse_client=self.clickhouse_client(),
            sink_factory=self.sink_factory,
        ) as verifier:
            after = verifier.repair(verifier.stores(table), result)
        left = {(d.target, d.ident) for diffs in after.drift.values() for d in diffs}
        repaired = [d for d in check.diffs if (d.target, d.ident) not in left]
        for group in drift_summary(repaired):
            self.log.info("drift_repaired", table=table.qualified_name, **group)
        if left:
            self.log.warning(
                "drift_not_repaired", table=table.qualified_name, rows=len(left),
                unconfirmed=after.unconfirmed,
            )  # fmt: skip

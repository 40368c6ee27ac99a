"""The drift monitor: the daemon compares source, historic and ClickHouse in the background.

A pass walks every published table with a key in ranges of the primary key, paced so
that the pass is spread over `monitor_interval_s` and never reads more than
`monitor_rows_per_s` source rows a second. Each range is one step:

1. Export a snapshot of the source (a temporary slot: its consistent point S is exact),
   read the range's keys and row hashes in it, and end it (a snapshot kept open would hold
   back the source's pruning of dead rows while the step waits).
2. Write a heartbeat into the source's WAL and wait until the daemon holds everything
   committed before S.
3. Compare each target's fingerprint of its rows older than S with the source's, both
   leaving out the keys the target holds changed since (newer than the read: a later pass
   compares them); where they differ, narrow to small pieces and compare key by key.
   Every difference left is drift at S.
4. Re-read the drifted pieces once at a fresh snapshot; only keys that differ in both
   reads are reported (and, with `monitor_repair`, repaired as `cdc verify --repair`
   does).

The pace is `cdc.check.pacing`'s, a step `cdc.check.rangecheck`'s.

A table's drift is published when its pass ends (`cdc_drift_rows{table,target}`), and
recorded in the historic database for `cdc status` (`cdc.ops.status.record_check`). The
monitor never stops the daemon: a failed step is logged and tried again later.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import Any, Final

import psycopg

from cdc.check.drift import SAMPLE_KEYS, KeyDiff, TableResult, Target, key_text
from cdc.check.keyrange import Key
from cdc.check.pacing import paced_rows, step_due, step_rows
from cdc.check.position import TargetPosition
from cdc.check.rangecheck import WAIT_S, Connections, RangeCheck, RangeChecker
from cdc.check.verify import Verifier
from cdc.errors import CdcError, ErrorKind
from cdc.load.planning import published_schemas
from cdc.ops import status
from cdc.ops.metrics import Metrics
from cdc.ops.settings import Settings, redact_url
from cdc.schema import TableSchema
from cdc.sinks.clickhouse import client as clickhouse
from cdc.sinks.factory import SinkFactory
from cdc.stream import eligibility, followplan
from cdc.stream.session import canonical_dsn, shown_dsn

RETRY_S: Final = 30.0  # pause after a failed step (at most the interval)
FIRST_PASS_S: Final = 60.0  # the first pass starts this long after the start (at most the interval)
ESTIMATE_SQL: Final = (  # the planner's row estimate, summed over a partitioned table's leaves
    "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_partition_tree(("
    "SELECT r.oid FROM pg_class r JOIN pg_namespace n ON n.oid = r.relnamespace "
    "WHERE n.nspname = %s AND r.relname = %s)) p JOIN pg_class c ON c.oid = p.relid "
    "WHERE p.isleaf"
)


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
        self.metrics = metrics
        self._shared_clickhouse = shared_clickhouse
        self._own_clickhouse: Any = None
        self.sink_factory = sink_factory
        self.skip = skip
        self.log = log.bind(component="monitor")
        self.source_dsn = canonical_dsn(settings.require_source_dsn())
        self.historic_dsn = canonical_dsn(settings.require_historic_dsn())
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._source: psycopg.Connection[Any] | None = None  # reads inside snapshots
        self._control: psycopg.Connection[Any] | None = None  # catalog, heartbeats
        self._historic: psycopg.Connection[Any] | None = None
        self._newer = 0  # differences newer than their snapshot in this pass
        self.checker = RangeChecker(
            settings,
            position,
            self._connections,
            self.clickhouse_client,
            self.stop_event.is_set,
            self.log,
            heartbeat_prefix,
        )

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
            raise CdcError(
                kind, f"monitor cannot connect to {shown_dsn(dsn)}: {redact_url(str(exc))}"
            ) from exc

    def _connections(self) -> Connections:
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

    def _settled(self, table: TableSchema) -> bool:
        """Whether `table` is to be judged now (`cdc.stream.followplan.settled`): not while
        the schema follower copies it, or is about to."""
        _, control, historic = self._connections()
        found = eligibility.source_tables(control, table.schema, table.name)
        state, shape = status.read_table(historic, self.settings.historic_schema, table.name)
        if found and followplan.settled(state, shape, found[0].shape):
            return True
        self.log.info("monitor_table_deferred", table=table.qualified_name,
                      reason="its copy is due or under way")  # fmt: skip
        return False

    def _check_table(self, table: TableSchema, started: float, done: int, expected: int) -> int:
        """Walk `table`'s ranges; publish its drift when the walk is complete. A table the
        schema follower copies, or is about to, is left for the next pass."""
        if not self._settled(table):
            return done
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
            check, targets = self.checker.check(table, lower, size)
            done += paced_rows(self.checker.read)  # every source row the step read, narrowing too
            if not check.compared:
                continue  # the same range again, once the daemon has caught up
            self.metrics.monitor_rows_checked.inc(check.rows)
            self._newer += check.newer
            if check.drift and not self._settled(table):
                return done  # changed meanwhile: the follower copies it
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

"""Copy tables into both targets at an exported snapshot: chunked, parallel, resumable.

A job splits each table into primary-key ranges (chunks) and copies each range with
`COPY (SELECT ...) TO STDOUT` inside a transaction that imports the snapshot; every row
gets `_version = snapshot_lsn << 64`, so it never overwrites a newer streamed change and
every later change overwrites it (DESIGN.md invariant 3). The workers copy chunks while
they are being found. Progress is kept in the historic database (`_cdc_backfill` chunks,
recorded as they are found; `_cdc_backfill_plans` the job's tables, each planned once its
last chunk is recorded; `_cdc_tables` per-table state `copying -> ready | failed |
quarantined`): a restarted job copies only the chunks not done yet and continues a plan
that was cut short, at a fresh snapshot, which the versioning makes just as correct. The
chunks' SQL is built in `cdc.load.chunks`.

An append-only log (a table without a key) is copied by ranges of blocks, each row
versioned by the snapshot and its ctid (`cdc.load.chunks.log_version`). Its copy replaces the
targets' rows: first everything below the snapshot's version is removed, as a TRUNCATE at
that version would (the snapshot holds every row committed before it), then the rows are
copied; a job cut short copies such a table again from its first chunk, at the new
snapshot (its rows' versions depend on the snapshot).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import psycopg
from tenacity import Retrying

from cdc.apply.batch import Batch, RowImage, TableBatch
from cdc.errors import Action, CdcError, ErrorKind
from cdc.load.chunks import (
    OUT_OF_RANGE,
    ROWS_PER_BLOCK,
    Chunk,
    binary_copy_sql,
    chunk_filter,
    copy_sql,
    direct_copy_ok,
    direct_copy_sql,
    log_copy_sql,
    next_boundary_sql,
    relation_blocks_sql,
    relation_for,
)
from cdc.load.copyout import copy_out
from cdc.load.copytext import parse_row, split_lines
from cdc.load.jobstate import JobState
from cdc.ops import faults
from cdc.ops.logs import get_logger
from cdc.retry import Backoff, retryable, retrying
from cdc.schema import TableSchema, describe_table
from cdc.sinks.base import CopiedRows, CopyFormat, Sink
from cdc.sinks.historic.sink import HistoricSink
from cdc.states import TableState
from cdc.stream.session import canonical_dsn
from cdc.stream.slots import replicated_tables
from cdc.stream.snapshot import Snapshot, import_snapshot

CHUNK_ATTEMPTS = 6
# COPY data a worker holds for one write to a target. ClickHouse makes a part of each
# insert: 1M rows in parts of 50k cost it as much again in merges as the inserts
# (measured), in parts of 200k (32 MB of the benchmark's rows) they are not merged at once.
BATCH_BYTES = 32 << 20
_log = get_logger()


def _transient(exc: BaseException) -> bool:
    """Worth copying the chunk again: Postgres rolled it back for a conflict with another
    writer, or a target's connection failed (the sink reconnects on its next use)."""
    if isinstance(exc, psycopg.Error) and (exc.sqlstate or "").startswith("40"):
        return True  # class 40, transaction rollback: deadlock, serialization failure
    return retryable(exc)


def _retrying(table: str, chunk: int) -> Retrying:
    """Attempts at a chunk's write, again after a transient failure (`_transient`)."""
    backoff = Backoff(first_s=0.1, max_s=5.0, attempts=CHUNK_ATTEMPTS)
    return retrying("backfill_chunk_retry", backoff, retry_if=_transient, table=table, chunk=chunk)


@dataclass
class Held:
    """A chunk copied (committed, in the targets in the source database) whose rows are
    still to be given to `sinks`."""

    chunk: Chunk
    rows: CopiedRows
    sinks: list[Sink]


@dataclass
class Progress:
    """Shared counters; `on_change` is called (from worker threads) after each chunk."""

    total_chunks: int = 0
    done_chunks: int = 0
    rows: int = 0
    started: float = field(default_factory=time.monotonic)
    failed: dict[str, str] = field(default_factory=dict)  # table: why it cannot be copied
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, rows: int) -> None:
        with self.lock:
            self.done_chunks += 1
            self.rows += rows

    @property
    def rows_per_s(self) -> float:
        return self.rows / max(time.monotonic() - self.started, 1e-9)


# -- SQL (pure) -------------------------------------------------------------------------------


class Backfill:
    """One job over `tables`, its state in `state_dsn` (the historic database)."""

    def __init__(
        self,
        source_dsn: str,
        state_dsn: str,
        state_schema: str,
        job: str,
        tables: Sequence[TableSchema],
        make_sinks: Callable[[], list[Sink]],
        *,
        chunk_size: int = 50_000,
        workers: int = 2,
        batch_bytes: int = BATCH_BYTES,
        where: str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        logs = sorted(t.name for t in tables if t.append_only)
        if where and logs:
            raise CdcError(
                ErrorKind.CONFIG,
                f"--where cannot be used for {', '.join(logs)}: a table without a key is "
                "copied whole (its copy replaces what the targets hold)",
            )
        self.source_dsn = canonical_dsn(source_dsn)
        self.state_dsn = state_dsn
        self.tables = {t.name: t for t in tables}
        self.make_sinks = make_sinks
        self.chunk_size = chunk_size
        self.workers = workers
        self.batch_bytes = batch_bytes
        self.where = where
        self.on_progress = on_progress
        self.progress = Progress()
        self.job_state = JobState(state_schema, job, self.tables)

    def _state(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.state_dsn, autocommit=True)

    def register(self) -> None:
        """Record the job's tables as still to copy (idempotent), so `unfinished` holds
        from now on until every chunk is done."""
        with self._state() as conn:
            self.job_state.to_plan(conn)

    def restart(self) -> None:
        """Forget every chunk of the job: each table is split and copied again."""
        with self._state() as conn:
            for table in self.job_state.tables:
                self.job_state.restart(conn, table)

    def unfinished(self) -> bool:
        """True if this job started before and has work left: a chunk not copied yet, or a
        table whose plan was cut short."""
        with self._state() as conn:
            plans = self.job_state.plans(conn)
            return bool(plans) and (
                not all(plans.values()) or bool(self.job_state.pending_chunks(conn))
            )

    def plan(
        self, snapshot: Snapshot, tables: Sequence[str], found: Callable[[Chunk], None]
    ) -> None:
        """Split `tables` into chunks (in `snapshot`), recording each chunk as it is found,
        then handing it to `found`; a table whose plan was cut short continues after its
        last recorded chunk (key ranges do not depend on the snapshot)."""
        with psycopg.connect(self.source_dsn) as source, self._state() as state:
            import_snapshot(source, snapshot)
            for name in tables:
                table = self.tables[name]
                number, lower = self.job_state.next_chunk(state, name)
                if table.append_only:
                    self._plan_blocks(source, state, table, number, lower, found)
                    continue
                while True:
                    bound = source.execute(
                        next_boundary_sql(table, lower, self.chunk_size, self.where)
                    ).fetchone()
                    chunk = Chunk(name, number, lower, None if bound is None else bound[0])
                    self.job_state.record(state, chunk)
                    faults.point("mid_backfill_plan")
                    found(chunk)
                    if chunk.upper is None:
                        break
                    number, lower = number + 1, chunk.upper
            source.rollback()

    def _plan_blocks(
        self,
        source: psycopg.Connection[Any],
        state: psycopg.Connection[Any],
        table: TableSchema,
        number: int,
        lower: list[str] | None,
        found: Callable[[Chunk], None],
    ) -> None:
        """An append-only log's chunks: ranges of blocks."""
        row = source.execute(relation_blocks_sql(table)).fetchone()
        blocks = row[0] if row is not None else 0
        step = max(1, self.chunk_size // ROWS_PER_BLOCK)
        while True:
            upper = (int(lower[0]) if lower else 0) + step
            chunk = Chunk(table.name, number, lower, None if upper >= blocks else [str(upper)])
            self.job_state.record(state, chunk)
            found(chunk)
            if chunk.upper is None:
                return
            number, lower = number + 1, chunk.upper

    def _replace_logs(self, snapshot: Snapshot, names: Sequence[str]) -> None:
        """Remove the rows of append-only logs `names` below the snapshot's version from
        every target, as a TRUNCATE at that version: the copy brings them back."""
        batch = Batch(end_lsn=snapshot.lsn)
        layouts = {}
        for name in names:
            table = self.tables[name]
            batch_table = TableBatch(relation_for(table), table.column_names,
                                     tuple(c.type_oid for c in table.columns), ())  # fmt: skip
            batch_table.truncate_version = snapshot.version
            batch.tables[batch_table.name] = batch_table
            layouts[batch_table.name] = table
        sinks = self.make_sinks()
        try:
            for sink in sinks:
                sink.apply(batch, layouts)
        finally:
            for sink in sinks:
                sink.close()

    def run(self, snapshot: Snapshot) -> Progress:
        """Copy every chunk not done yet, at `snapshot`, while the tables not split yet are
        split into chunks: the workers start on the first chunk found (the plan reads each
        table's key index once, which would otherwise leave a core idle)."""
        with self._state() as state:
            to_plan = self.job_state.to_plan(state)
            chunks = self.job_state.pending_chunks(state)
            copying = {c.table for c in chunks} | set(to_plan)
            logs = sorted(name for name in copying if self.tables[name].append_only)
            for name in logs:
                self.job_state.restart(state, name)
            if logs:
                to_plan = self.job_state.to_plan(state)
                chunks = self.job_state.pending_chunks(state)
            for name in copying:
                self.job_state.set_state(state, name, TableState.COPYING)
        if logs:
            self._replace_logs(snapshot, logs)
        self.progress = Progress(total_chunks=len(chunks))
        work: queue.SimpleQueue[Chunk | None] = queue.SimpleQueue()
        for chunk in chunks:
            work.put(chunk)
        workers = max(1, self.workers)

        def found(chunk: Chunk) -> None:
            with self.progress.lock:
                self.progress.total_chunks += 1
            work.put(chunk)

        def planner() -> None:
            try:
                self.plan(snapshot, to_plan, found)
            finally:
                for _ in range(workers):
                    work.put(None)  # no more chunks

        failures: list[BaseException] = []
        with ThreadPoolExecutor(max_workers=workers + 1) as pool:
            futures = [pool.submit(planner)]
            futures += [pool.submit(self._work, work, snapshot) for _ in range(workers)]
            for future in futures:
                if (exc := future.exception()) is not None:
                    failures.append(exc)
        with self._state() as state:
            cut = {name for name, planned in self.job_state.plans(state).items() if not planned}
            left = {c.table for c in self.job_state.pending_chunks(state)} | cut
            for name in copying:
                if name in self.progress.failed:
                    reason = self.progress.failed[name]
                    self.job_state.set_state(state, name, TableState.QUARANTINED, reason)
                elif name in left:
                    error = str(failures[0]) if failures else None
                    self.job_state.set_state(state, name, TableState.FAILED, error)
                else:
                    self.job_state.set_state(state, name, TableState.READY)
        if failures:
            raise failures[0]
        return self.progress

    def _work(self, work: queue.SimpleQueue[Chunk | None], snapshot: Snapshot) -> None:
        """A worker: copy chunks from `work` until it hands out None. A chunk's rows for a
        target outside the source database are held and given in one write per table and
        `batch_bytes` (ClickHouse makes one part of each insert, and merges small ones);
        a chunk is done once every target has its rows."""
        sinks = self.make_sinks()
        held: list[Held] = []
        try:
            with psycopg.connect(self.source_dsn) as source, self._state() as state:
                # Timestamps printed in UTC: half the server's work of printing them in a
                # named zone, and the same instants.
                source.execute("SET TimeZone = 'UTC'")
                source.commit()
                while (chunk := work.get()) is not None:
                    if held and held[0].chunk.table != chunk.table:
                        self._give(source, state, held, snapshot)
                        held = []
                    if chunk.table in self.progress.failed:
                        continue
                    try:
                        rows, holding = self._copy_chunk_retrying(source, sinks, chunk, snapshot)
                    except CdcError as exc:
                        self._quarantine(chunk.table, exc)
                        continue
                    if holding is None:
                        self._done(state, chunk, rows, snapshot)
                        continue
                    held.append(holding)
                    if sum(len(h.rows.data) for h in held) >= self.batch_bytes:
                        self._give(source, state, held, snapshot)
                        held = []
                if held:
                    self._give(source, state, held, snapshot)
        finally:
            for sink in sinks:
                sink.close()

    def _quarantine(self, table: str, exc: CdcError) -> None:
        """Stop copying `table`, whose rows a target cannot hold; other errors propagate."""
        if exc.policy.action is not Action.QUARANTINE_TABLE:
            raise exc
        self.progress.failed.setdefault(table, str(exc))

    def _done(
        self, state: psycopg.Connection[Any], chunk: Chunk, rows: int, snapshot: Snapshot
    ) -> None:
        self.job_state.done(state, chunk, rows, str(snapshot.lsn))
        self.progress.add(rows)
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def _give(
        self,
        source: psycopg.Connection[Any],
        state: psycopg.Connection[Any],
        held: list[Held],
        snapshot: Snapshot,
    ) -> None:
        """Give the held chunks' rows (all of one table) to the sinks that need them, one
        write per sink; a chunk a sink refuses is parsed for it. Then the chunks are done."""
        table = self.tables[held[0].chunk.table]
        try:
            for sink in {id(s): s for h in held for s in h.sinks}.values():
                mine = [h for h in held if any(s is sink for s in h.sinks)]
                for attempt in _retrying(table.name, mine[0].chunk.number):
                    with attempt:
                        refused = sink.apply_copy(table, [h.rows for h in mine], snapshot.version)
                for position in refused:
                    self._copy_chunk_retrying(source, [sink], mine[position].chunk, snapshot,
                                              parse=True)  # fmt: skip
        except CdcError as exc:
            self._quarantine(table.name, exc)
            return
        for h in held:
            self._done(state, h.chunk, h.rows.rows, snapshot)

    def _copy_chunk_retrying(
        self,
        source: psycopg.Connection[Any],
        sinks: list[Sink],
        chunk: Chunk,
        snapshot: Snapshot,
        parse: bool = False,
    ) -> tuple[int, Held | None]:
        """Copy one chunk (parsed, with `parse`) and commit: its row count, and its rows
        held for the sinks that are given them later. A transient failure (a deadlock or
        serialization failure against the daemon's writes, a lost target connection) rolls
        the chunk back and copies it again, with capped exponential backoff,
        `CHUNK_ATTEMPTS` times at most."""
        for attempt in _retrying(chunk.table, chunk.number):
            with attempt:
                try:
                    import_snapshot(source, snapshot, read_only=False)
                    if parse:
                        table = self.tables[chunk.table]
                        copied = self._copy_chunk_parsed(source, sinks, table, chunk, snapshot)
                        result: tuple[int, Held | None] = (copied, None)
                    else:
                        result = self._copy_chunk(source, sinks, chunk, snapshot)
                    source.commit()
                except BaseException:
                    if not source.closed:
                        source.rollback()
                    raise
        return result

    def _copy_chunk(
        self, source: psycopg.Connection[Any], sinks: list[Sink], chunk: Chunk, snapshot: Snapshot
    ) -> tuple[int, Held | None]:
        """Copy one chunk, inside a transaction on `source` that sees `snapshot`: unparsed
        where the types allow (read as binary COPY when every sink that is given the rows
        takes it), copied within the database where it can be, and the rows held for the
        other sinks."""
        table = self.tables[chunk.table]
        if not direct_copy_ok(table) or table.append_only:
            return self._copy_chunk_parsed(source, sinks, table, chunk, snapshot), None
        given = [sink for sink in sinks if not self._within(sink)]
        binary = all(sink.copy_format(table) is CopyFormat.BINARY for sink in given)
        copied = self._copy_out_direct(source, table, chunk, snapshot, binary)
        if copied is None:
            return self._copy_chunk_parsed(source, sinks, table, chunk, snapshot), None
        faults.point("mid_backfill_chunk")
        rest = [s for s in sinks if not self._copied_within(source, s, table, chunk, snapshot)]
        return copied.rows, Held(chunk, copied, rest) if rest else None

    def _copy_out_direct(
        self,
        source: psycopg.Connection[Any],
        table: TableSchema,
        chunk: Chunk,
        snapshot: Snapshot,
        binary: bool,
    ) -> CopiedRows | None:
        """The chunk's rows for the targets, untouched: as binary COPY, or as COPY text for
        both targets; None if, in text, a date or timestamp in it lies outside ClickHouse's
        range (the chunk is then parsed, which names the value in its error)."""
        if binary:
            data, messages = copy_out(source, binary_copy_sql(table, chunk, self.where))
            return CopiedRows(CopyFormat.BINARY, data, messages - 1)
        source.execute("SAVEPOINT cdc_direct_copy")
        try:
            data, rows = copy_out(
                source, direct_copy_sql(table, chunk, self.where, snapshot.version)
            )
        except psycopg.errors.InvalidDatetimeFormat as exc:
            if OUT_OF_RANGE not in str(exc):
                raise
            source.execute("ROLLBACK TO SAVEPOINT cdc_direct_copy")
            return None
        return CopiedRows(CopyFormat.TEXT, data, rows)

    def _within(self, sink: Sink) -> TypeGuard[HistoricSink]:
        """A historic sink in the source database: rows are copied from table to table."""
        return isinstance(sink, HistoricSink) and sink.in_database(self.source_dsn)

    def _copied_within(
        self,
        source: psycopg.Connection[Any],
        sink: Sink,
        table: TableSchema,
        chunk: Chunk,
        snapshot: Snapshot,
    ) -> bool:
        """For a historic schema in the source database: the chunk's rows copied from table
        to table by the server, in the snapshot's transaction (the caller commits it), no
        value leaving it. False if this sink is elsewhere, or the rows met a concurrent write
        (REPEATABLE READ refuses it; the caller copies them the ordinary way)."""
        if not self._within(sink):
            return False
        sink.prepare([table])
        rows = chunk_filter(table, chunk, self.where)
        # A key range the table does not hold yet (an initial load) takes a plain INSERT.
        for upsert in (False, True):
            source.execute("SAVEPOINT cdc_copy_within")
            try:
                source.execute(sink.copy_within_sql(table, rows, snapshot.version, upsert))
            except psycopg.errors.UniqueViolation:
                source.execute("ROLLBACK TO SAVEPOINT cdc_copy_within")
                continue
            except psycopg.errors.SerializationFailure:
                source.execute("ROLLBACK TO SAVEPOINT cdc_copy_within")
                return False
            return True
        return False

    def _copy_chunk_parsed(
        self,
        source: psycopg.Connection[Any],
        sinks: list[Sink],
        table: TableSchema,
        chunk: Chunk,
        snapshot: Snapshot,
    ) -> int:
        relation = relation_for(table)
        batch_table = TableBatch(
            relation, table.column_names, tuple(c.type_oid for c in table.columns),
            table.key_indexes,
        )  # fmt: skip
        if table.append_only:
            self._read_log_chunk(source, batch_table, table, chunk, snapshot)
            return self._give_parsed(sinks, batch_table, table, snapshot)
        version = snapshot.version
        key_indexes = table.key_indexes
        width = len(table.columns)
        with source.cursor() as cur, cur.copy(copy_sql(table, chunk, self.where)) as copy:
            for line in split_lines(bytes(block) for block in copy):
                values = parse_row(line, width)
                key = tuple(values[i] for i in key_indexes)
                batch_table.rows[key] = RowImage(version, False, values)
        return self._give_parsed(sinks, batch_table, table, snapshot)

    def _read_log_chunk(
        self,
        source: psycopg.Connection[Any],
        batch_table: TableBatch,
        table: TableSchema,
        chunk: Chunk,
        snapshot: Snapshot,
    ) -> None:
        """An append-only log's chunk, each row keyed by its version (`log_copy_sql`)."""
        width = len(table.columns)
        query = log_copy_sql(table, chunk, self.where, snapshot.version)
        with source.cursor() as cur, cur.copy(query) as copy:
            for line in split_lines(bytes(block) for block in copy):
                values = parse_row(line, width + 1)
                version = values[-1]
                assert isinstance(version, bytes)
                batch_table.rows[(version,)] = RowImage(int(version), False, values[:-1], True)

    @staticmethod
    def _give_parsed(
        sinks: list[Sink], batch_table: TableBatch, table: TableSchema, snapshot: Snapshot
    ) -> int:
        faults.point("mid_backfill_chunk")
        batch = Batch(tables={batch_table.name: batch_table}, end_lsn=snapshot.lsn)
        layouts = {batch_table.name: table}
        for sink in sinks:
            sink.apply(batch, layouts)
        return len(batch_table.rows)


def check_tables(requested: Sequence[str], published: Sequence[str]) -> None:
    unknown = sorted(set(requested) - set(published))
    if unknown:
        raise CdcError(
            ErrorKind.CONFIG,
            f"not in the publication: {', '.join(unknown)}; add them with "
            "`cdc publication add-table`",
        )


def published_schemas(
    conn: psycopg.Connection[Any], publication: str, only: Sequence[str] = ()
) -> list[TableSchema]:
    """Schemas of the publication's tables and of its append publication's (all, or the
    ones named in `only`)."""
    published = replicated_tables(conn, publication)
    check_tables(only, [name for _, name in published])
    return [
        describe_table(conn, schema, name) for schema, name in published if not only or name in only
    ]

"""Copy tables into both targets at an exported snapshot: chunked, parallel, resumable.

A job splits each table into primary-key ranges (chunks, `cdc.load.planning`) and copies
each range with `COPY (SELECT ...) TO STDOUT` inside a transaction that imports the
snapshot (`cdc.load.chunkcopy`); every row gets `_version = snapshot_lsn << 64`, so it
never overwrites a newer streamed change and every later change overwrites it (DESIGN.md
invariant 3). The workers copy chunks while they are being found. Progress is kept in the
historic database (`cdc.load.jobstate`: `_cdc_backfill` chunks, recorded as they are
found; `_cdc_backfill_plans` the job's tables, each planned once its last chunk is
recorded; `_cdc_tables` per-table state `copying -> ready | failed | quarantined`): a
restarted job copies only the chunks not done yet and continues a plan that was cut short,
at a fresh snapshot, which the versioning makes just as correct. The chunks' SQL is built
in `cdc.load.chunks`.

An append-only log (a table without a key) is copied by ranges of blocks, and its copy
replaces the targets' rows (`cdc.load.appendonly`); a job cut short copies such a table
again from its first chunk, at the new snapshot.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg

from cdc.errors import Action, CdcError, ErrorKind, backfill_command
from cdc.load.appendonly import block_chunks, replace_copied
from cdc.load.chunkcopy import ChunkCopier, Held
from cdc.load.chunks import Chunk
from cdc.load.jobstate import JobState
from cdc.load.planning import key_chunks
from cdc.ops import faults, status
from cdc.ops.logs import get_logger
from cdc.schema import TableSchema, describe_table
from cdc.sinks.base import Sink
from cdc.sinks.historic.sql import SESSION_SQL
from cdc.states import TableState
from cdc.stream import eligibility
from cdc.stream.session import canonical_dsn
from cdc.stream.snapshot import Snapshot, exported_snapshot, import_snapshot

# COPY data a worker holds for one write to a target. ClickHouse makes a part of each
# insert: 1M rows in parts of 50k cost it as much again in merges as the inserts
# (measured), in parts of 200k (32 MB of the benchmark's rows) they are not merged at once.
BATCH_BYTES = 32 << 20
# What reading or converting a table's copy raises when its columns changed since it was
# described: a column gone, or data of another type than described (a binary COPY is of
# the columns as they are now): the table is described and copied again.
DESCRIBED_OTHERWISE = (
    psycopg.errors.UndefinedColumn,
    psycopg.errors.UndefinedTable,
    psycopg.DataError,  # a value of the new type in a target of the old one (SQLSTATE 22)
    ValueError,  # a binary COPY field of another width than described
)
LEFT_PUBLICATION = (
    "dropped, renamed or made again before the copy's snapshot: not copied; a table "
    "that has its name now is picked up as new by the running daemon"
)
REWRITE_ATTEMPTS = 5  # copies again of a table rewritten while it is copied
FEW_TABLES = 20  # recorded as they were at the copy's snapshot one by one, not by schema
# The tables of `schema` named in `names` that none of the publications `pubs` holds
# (read at the copy's snapshot: plain catalog reads see the catalog as it was then).
UNPUBLISHED_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = ANY(%(names)s) AND NOT EXISTS (
    SELECT 1 FROM pg_publication p WHERE p.pubname = ANY(%(pubs)s) AND (
        p.puballtables
        OR EXISTS (SELECT 1 FROM pg_publication_rel r WHERE r.prpubid = p.oid AND r.prrelid = c.oid)
        {schemas}))
"""
SCHEMA_PUBLICATIONS = 150000  # from Postgres 15 a publication may hold a schema's tables
IN_SCHEMA_SQL = """OR EXISTS (SELECT 1 FROM pg_publication_namespace s
                   WHERE s.pnpubid = p.oid AND s.pnnspid = n.oid)"""
# The job's tables (of one schema) a leaf of which has another file than the snapshot's
# catalog names: rewritten or truncated since (run in a transaction that imported it).
REWRITTEN_SQL = """
SELECT DISTINCT c.relname FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class l
  ON l.oid = c.oid OR l.oid IN (SELECT relid FROM pg_partition_tree(c.oid) WHERE isleaf)
WHERE n.nspname = %(schema)s AND c.relname = ANY(%(tables)s) AND l.relkind = 'r'
  AND l.relfilenode IS DISTINCT FROM pg_relation_filenode(l.oid)
"""
_log = get_logger()


@dataclass
class Progress:
    """Shared counters; `on_progress` is called (from worker threads) after each chunk."""

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
        replaces: bool = False,
        publications: Collection[str] = (),
    ) -> None:
        """`replaces`: the copy replaces every row the targets hold, for every table (for
        an append-only log it always does). `publications`: those the daemon streams; a
        table none of them holds at the copy's snapshot is not copied (`_unpublished`)."""
        if where and replaces:
            raise CdcError(
                ErrorKind.CONFIG,
                "--where cannot be used with --replace: a copy that replaces what the targets "
                "hold copies whole tables (it would remove every row the predicate leaves out)",
            )
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
        self.replaces = replaces
        self.publications = list(publications)
        self.progress = Progress()
        # Tables whose copy could not be read as they were described, with why.
        self._changed: dict[str, str] = {}
        # Described again, their targets could not follow: not copied again, with why.
        self._set_aside: dict[str, str] = {}
        self.job_state = JobState(state_schema, job, self.tables)
        self.copier = ChunkCopier(self.source_dsn, self.tables, where)

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

    def restart_unfinished(self) -> None:
        """Forget the chunks of every table with work left, so each is copied again whole
        at the next snapshot. A table is copied at one snapshot: the stream replays from
        the slot's start, and a change there can need a row as the copy found it (a key
        moved from a range copied later, at a newer snapshot that no longer has the old
        key, into one copied before it existed, would find its unchanged values nowhere)."""
        with self._state() as conn:
            plans = self.job_state.plans(conn)
            pending = {chunk.table for chunk in self.job_state.pending_chunks(conn)}
            for table, planned in plans.items():
                if not planned or table in pending:
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
        last recorded chunk (key ranges do not depend on the snapshot). A table whose key
        cannot be read as it was described (a key column renamed meanwhile) is copied
        again (`run`)."""
        with psycopg.connect(self.source_dsn) as source, self._state() as state:
            import_snapshot(source, snapshot)
            for name in tables:
                try:
                    with source.transaction():  # a savepoint: the next tables go on
                        self._plan_table(source, state, name, found)
                except DESCRIBED_OTHERWISE as exc:
                    self._changed[name] = str(exc).strip()
            source.rollback()

    def _plan_table(
        self,
        source: psycopg.Connection[Any],
        state: psycopg.Connection[Any],
        name: str,
        found: Callable[[Chunk], None],
    ) -> None:
        table = self.tables[name]
        number, lower = self.job_state.next_chunk(state, name)
        if table.append_only:
            chunks = block_chunks(source, table, number, lower, self.chunk_size)
        else:
            chunks = key_chunks(source, table, number, lower, self.chunk_size, self.where)
        for chunk in chunks:
            self.job_state.record(state, chunk)
            if not table.append_only:
                faults.point("mid_backfill_plan")
            found(chunk)

    def run(self, snapshot: Snapshot) -> Progress:
        """Copy every chunk not done yet, at `snapshot`, while the tables not split yet are
        split into chunks: the workers start on the first chunk found (the plan reads each
        table's key index once, which would otherwise leave a core idle).

        A table rewritten (`ALTER ... TYPE`, a volatile `ADD COLUMN` default) or truncated
        while it was copied looks empty to the snapshot from then on (neither is MVCC-safe),
        so the chunks copied after it were empty; one whose column was dropped or renamed
        cannot be read as it was described (a snapshot does not keep the catalog as it
        was): such a table is copied again, whole, described again, at a
        new snapshot (every change streamed after that one is newer than the copy), up to
        `REWRITE_ATTEMPTS` times; then it is given up as failed, with the fix."""
        progress = self._run(snapshot)
        rewritten = self._to_copy_again(snapshot)
        for _ in range(REWRITE_ATTEMPTS):
            if not rewritten:
                break
            _log.warning("table_rewritten_while_copied", tables=list(rewritten),
                         detail="rewritten, truncated or its columns changed while it was "
                         "copied: copied again, whole, at a new snapshot")  # fmt: skip
            self._copy_again(list(rewritten))
            with exported_snapshot(self.source_dsn) as again:
                more = self._run(again)
                rewritten = self._to_copy_again(again)
            progress.rows += more.rows
            progress.done_chunks += more.done_chunks
            progress.failed.update(more.failed)
        for name, why in rewritten.items():
            progress.failed.setdefault(
                name, f"its copy could not be read as the table was described ({why}), "
                f"{REWRITE_ATTEMPTS + 1} times" if why is not None else
                f"rewritten or truncated at the source while it was copied, "
                f"{REWRITE_ATTEMPTS + 1} times: run {backfill_command(name)} when it is not",
            )  # fmt: skip
        progress.failed.update(self._set_aside)
        return progress

    def _record_followed(self, snapshot: Snapshot, names: Collection[str]) -> None:
        """Record the tables copied at `snapshot` as they were in it (OID, `Shape`), unless
        recorded already: what the schema follower compares the source with at its first
        look after a start, so a column renamed or a partition dropped after the copy's
        snapshot, which the copy does not hold, is seen. An older record is kept: chunks
        copied at an older snapshot (a copy resumed) hold the table as it was then, and a
        record older than the rows costs a copy too many, never one too few."""
        by_schema: dict[str, set[str]] = {}
        for name in names:
            by_schema.setdefault(self.tables[name].schema, set()).add(name)
        followed: dict[str, status.Followed] = {}
        with psycopg.connect(self.source_dsn) as source:
            import_snapshot(source, snapshot)
            for schema, wanted in by_schema.items():
                # A few tables (one added or copied again) by name: a schema of thousands
                # takes half a second to read whole.
                if len(wanted) > FEW_TABLES:
                    found = eligibility.source_tables(source, schema)
                else:
                    found = [t for name in sorted(wanted)
                             for t in eligibility.source_tables(source, schema, name)]  # fmt: skip
                for table in found:
                    if table.name in wanted:
                        followed[table.name] = status.Followed(table.oid, table.shape)
            source.rollback()
        with self._state() as state:
            status.record_followed(state, self.job_state.schema, followed, keep=True)

    def _to_copy_again(self, snapshot: Snapshot) -> dict[str, str | None]:
        """The tables to copy again, described again, at a new snapshot, in name order:
        those rewritten since `snapshot` (`_rewritten`; None), and those whose copy could
        not be read as they were described (why); not those set aside."""
        again: dict[str, str | None] = dict.fromkeys(self._rewritten(snapshot))
        again.update(self._changed)
        self._changed = {}
        return {name: again[name] for name in sorted(again) if name not in self._set_aside}

    def _rewritten(self, snapshot: Snapshot) -> list[str]:
        """The tables of the job whose storage changed since `snapshot` (a leaf's file is
        not the one the snapshot's catalog names)."""
        by_schema: dict[str, list[str]] = {}
        for table in self.tables.values():
            by_schema.setdefault(table.schema, []).append(table.name)
        found: list[str] = []
        with psycopg.connect(self.source_dsn) as source:
            import_snapshot(source, snapshot)
            for schema, names in by_schema.items():
                rows = source.execute(REWRITTEN_SQL, {"schema": schema, "tables": names})
                found += [row[0] for row in rows.fetchall()]
            source.rollback()
        return sorted(found)

    def _copy_again(self, names: Sequence[str]) -> None:
        """Forget the chunks of `names`, described again (a rewrite may change types) and
        their targets brought up to that (widened, columns added); one dropped meanwhile,
        or whose targets cannot follow it, is left out (the schema follower, or the
        stream, says so)."""
        described = []
        with self._state() as state, psycopg.connect(self.source_dsn) as source:
            for name in names:
                try:
                    table = describe_table(source, self.tables[name].schema, name)
                except CdcError:
                    continue
                self.tables[name] = table
                described.append(table)
                self.job_state.restart(state, name)
        sinks = self.make_sinks()
        try:
            for table in described:
                try:
                    for sink in sinks:
                        sink.prepare([table])
                except CdcError as exc:
                    if exc.policy.action is not Action.QUARANTINE_TABLE:
                        raise
                    self._set_aside[table.name] = str(exc)
        finally:
            for sink in sinks:
                sink.close()

    def _unpublished(self, snapshot: Snapshot) -> set[str]:
        """The job's tables that none of the daemon's publications holds at `snapshot`: a
        table dropped, renamed or made again (under its name) between the look that
        described it and the snapshot. The stream does not follow the table the name
        stands for at the snapshot, so its copy would stay as the snapshot found it: it is
        taken out of the job and recorded as dropped, and the schema follower picks up
        the table of that name as new (published, then copied whole, replacing)."""
        if not self.publications:
            return set()
        by_schema: dict[str, list[str]] = {}
        for table in self.tables.values():
            by_schema.setdefault(table.schema, []).append(table.name)
        gone: set[str] = set()
        with psycopg.connect(self.source_dsn) as source:
            import_snapshot(source, snapshot)
            schemas = IN_SCHEMA_SQL if source.info.server_version >= SCHEMA_PUBLICATIONS else ""
            query = UNPUBLISHED_SQL.format(schemas=schemas)
            for schema, names in by_schema.items():
                rows = source.execute(
                    query, {"schema": schema, "names": names, "pubs": self.publications}
                ).fetchall()
                gone.update(row[0] for row in rows)
            source.rollback()
        return gone

    def _run(self, snapshot: Snapshot) -> Progress:
        gone = self._unpublished(snapshot)
        with self._state() as state:
            to_plan = [name for name in self.job_state.to_plan(state) if name not in gone]
            chunks = [c for c in self.job_state.pending_chunks(state) if c.table not in gone]
            for name in sorted(gone):
                _log.warning("table_left_publication", table=self.tables[name].qualified_name,
                             detail=LEFT_PUBLICATION)  # fmt: skip
                self.job_state.forget(state, name)
                self.job_state.set_state(state, name, TableState.DROPPED, LEFT_PUBLICATION)
            copying = {c.table for c in chunks} | set(to_plan)
            # A copy recorded as replacing, cut short before the targets were emptied,
            # replaces again, whoever resumes it (the initial load's job resumed at a start
            # holds the tables the schema follower added).
            due = self.job_state.replacing(state)
            replaced = sorted(
                name
                for name in copying
                if self.replaces or self.tables[name].append_only or name in due
            )
            for name in replaced:
                self.job_state.restart(state, name)
            if replaced:
                to_plan = self.job_state.to_plan(state)
                chunks = self.job_state.pending_chunks(state)
            for name in copying:
                self.job_state.set_state(
                    state, name, TableState.REPLACING if name in replaced else TableState.COPYING
                )
        self._record_followed(snapshot, copying)
        if replaced:
            replace_copied(self.make_sinks, [self.tables[name] for name in replaced], snapshot)
            with self._state() as state:
                for name in replaced:
                    self.job_state.set_state(state, name, TableState.COPYING)
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
            error = str(failures[0]) if failures else None
            self.job_state.finish(state, copying, self.progress.failed, error)
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
                # named zone, and the same instants. Historic copies made in this session
                # compress as the historic sink's do.
                source.execute("SET TimeZone = 'UTC'")
                source.execute(SESSION_SQL)
                source.commit()
                while (chunk := work.get()) is not None:
                    if held and held[0].chunk.table != chunk.table:
                        self._give(source, state, held, snapshot)
                        held = []
                    if chunk.table in (*self.progress.failed, *self._changed, *self._set_aside):
                        continue
                    try:
                        rows, holding = self.copier.copy(source, sinks, chunk, snapshot)
                    except CdcError as exc:
                        self._quarantine(chunk.table, exc)
                        continue
                    except DESCRIBED_OTHERWISE as exc:
                        # Described before a column of it was dropped, renamed or retyped
                        # (or it was dropped): a snapshot does not keep the catalog as it
                        # was, and the copy's data is of the columns as they are now.
                        self._changed[chunk.table] = str(exc).strip()
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
        """Give the held chunks' rows (all of one table) to the sinks that need them
        (`ChunkCopier.give`), then the chunks are done."""
        try:
            self.copier.give(source, held, snapshot)
        except CdcError as exc:
            self._quarantine(held[0].chunk.table, exc)
            return
        except DESCRIBED_OTHERWISE as exc:
            self._changed[held[0].chunk.table] = str(exc).strip()  # as in `_work`
            return
        for h in held:
            self._done(state, h.chunk, h.rows.rows, snapshot)

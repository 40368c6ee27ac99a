"""Copy tables into both targets at an exported snapshot: chunked, parallel, resumable.

A job splits each table into primary-key ranges (chunks, `cdc.load.planning`) and copies
each range with `COPY (SELECT ...) TO STDOUT` inside a transaction that imports the
snapshot (`cdc.load.chunkcopy`); every row gets `_version = snapshot_lsn << 64`, so it
never overwrites a newer streamed change and every later change overwrites it (DESIGN.md
invariant 3). The workers copy chunks while they are being found (`cdc.load.workers`);
what the snapshot's catalog says of the tables is read by `cdc.load.atsnapshot`. Progress
is kept in the historic database (`cdc.load.jobstate`: `_cdc_backfill` chunks, recorded as they are
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

import functools
from collections.abc import Callable, Collection, Sequence
from typing import Any

import psycopg

from cdc.describe import describe_table
from cdc.errors import Action, CdcError, backfill_command
from cdc.load import atsnapshot
from cdc.load.appendonly import block_chunks, replace_copied
from cdc.load.chunkcopy import ChunkCopier
from cdc.load.chunks import Chunk
from cdc.load.jobstate import JobState
from cdc.load.planning import check_where, key_chunks
from cdc.load.workers import DESCRIBED_OTHERWISE, CopyRun, Progress
from cdc.ops import faults
from cdc.ops.logs import get_logger
from cdc.schema import TableSchema
from cdc.sinks.base import Sink
from cdc.states import TableState
from cdc.stream.session import canonical_dsn
from cdc.stream.snapshot import Snapshot, SnapshotSource, exported_snapshot, import_snapshot

# COPY data a worker holds for one write to a target. ClickHouse makes a part of each
# insert: 1M rows in parts of 50k cost it as much again in merges as the inserts
# (measured), in parts of 200k (32 MB of the benchmark's rows) they are not merged at once.
BATCH_BYTES = 32 << 20
LEFT_PUBLICATION = (
    "dropped, renamed or made again before the copy's snapshot: not copied; a table "
    "that has its name now is picked up as new by the running daemon"
)
REWRITE_ATTEMPTS = 5  # copies again of a table rewritten while it is copied
_log = get_logger()


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
        snapshots: SnapshotSource | None = None,
    ) -> None:
        """`replaces`: the copy replaces every row the targets hold, for every table (for
        an append-only log it always does). `publications`: those the daemon streams; a
        table none of them holds at the copy's snapshot is not copied (`_run`). `snapshots`:
        takes the snapshots a table rewritten while copied is copied again at (`run`)."""
        check_where(where, replaces, tables)
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
        self.snapshots = snapshots or functools.partial(exported_snapshot, self.source_dsn)
        self.progress = Progress()
        # Tables whose copy could not be read as they were described, with why.
        self.changed: dict[str, str] = {}
        # Described again, their targets could not follow: not copied again, with why.
        self.set_aside: dict[str, str] = {}
        self.job_state = JobState(state_schema, job, self.tables)
        self.copier = ChunkCopier(self.source_dsn, self.tables, where)

    def state(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.state_dsn, autocommit=True)

    def register(self) -> None:
        """Record the job's tables as still to copy (idempotent), so `unfinished` holds
        from now on until every chunk is done."""
        with self.state() as conn:
            self.job_state.to_plan(conn)

    def restart(self) -> None:
        """Forget every chunk of the job: each table is split and copied again."""
        with self.state() as conn:
            for table in self.job_state.tables:
                self.job_state.restart(conn, table)

    def restart_unfinished(self) -> None:
        """Forget the chunks of every table with work left, so each is copied again whole
        at the next snapshot. A table is copied at one snapshot: the stream replays from
        the slot's start, and a change there can need a row as the copy found it (a key
        moved from a range copied later, at a newer snapshot that no longer has the old
        key, into one copied before it existed, would find its unchanged values nowhere)."""
        with self.state() as conn:
            plans = self.job_state.plans(conn)
            pending = {chunk.table for chunk in self.job_state.pending_chunks(conn)}
            for table, planned in plans.items():
                if not planned or table in pending:
                    self.job_state.restart(conn, table)

    def unfinished(self) -> bool:
        """True if this job started before and has work left: a chunk not copied yet, or a
        table whose plan was cut short."""
        with self.state() as conn:
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
        with psycopg.connect(self.source_dsn) as source, self.state() as state:
            import_snapshot(source, snapshot)
            for name in tables:
                try:
                    with source.transaction():  # a savepoint: the next tables go on
                        self._plan_table(source, state, name, found)
                except DESCRIBED_OTHERWISE as exc:
                    self.changed[name] = str(exc).strip()
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
            with self.snapshots() as again:
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
        progress.failed.update(self.set_aside)
        return progress

    def _to_copy_again(self, snapshot: Snapshot) -> dict[str, str | None]:
        """The tables to copy again, described again, at a new snapshot, in name order:
        those rewritten since `snapshot` (None), and those whose copy could
        not be read as they were described (why); not those set aside."""
        rewritten = atsnapshot.rewritten(self.source_dsn, snapshot, self.tables.values())
        again: dict[str, str | None] = dict.fromkeys(rewritten)
        again.update(self.changed)
        self.changed = {}
        return {name: again[name] for name in sorted(again) if name not in self.set_aside}

    def _copy_again(self, names: Sequence[str]) -> None:
        """Forget the chunks of `names`, described again (a rewrite may change types) and
        their targets brought up to that (widened, columns added); one dropped meanwhile,
        or whose targets cannot follow it, is left out (the schema follower, or the
        stream, says so)."""
        described = []
        with self.state() as state, psycopg.connect(self.source_dsn) as source:
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
                    self.set_aside[table.name] = str(exc)
        finally:
            for sink in sinks:
                sink.close()

    def _begin(self, snapshot: Snapshot) -> tuple[list[str], list[Chunk], set[str], list[str]]:
        """Record what this pass at `snapshot` copies: the tables to plan, the chunks left,
        the tables copied (each recorded as copying, or replacing) and those replaced."""
        # A table dropped, renamed or made again (under its name) between the look that
        # described it and the snapshot is in none of the daemon's publications there. The
        # stream does not follow the table the name stands for at the snapshot, so its copy
        # would stay as the snapshot found it: it is taken out of the job and recorded as
        # dropped, and the schema follower picks up the table of that name as new
        # (published, then copied whole, replacing).
        gone = set()
        if self.publications:
            tables = self.tables.values()
            gone = atsnapshot.unpublished(self.source_dsn, snapshot, tables, self.publications)
        with self.state() as state:
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
        return to_plan, chunks, copying, replaced

    def _run(self, snapshot: Snapshot) -> Progress:
        to_plan, chunks, copying, replaced = self._begin(snapshot)
        with self.state() as state:
            copied = [self.tables[name] for name in copying]
            atsnapshot.record_followed(self.source_dsn, snapshot, copied, state,
                                       self.job_state.schema)  # fmt: skip
        if replaced:
            replace_copied(self.make_sinks, [self.tables[name] for name in replaced], snapshot)
            with self.state() as state:
                for name in replaced:
                    self.job_state.set_state(state, name, TableState.COPYING)
        run = CopyRun(self, snapshot, total_chunks=len(chunks))
        self.progress = run.progress
        failures = run.run(chunks, lambda found: self.plan(snapshot, to_plan, found))
        with self.state() as state:
            error = str(failures[0]) if failures else None
            self.job_state.finish(state, copying, self.progress.failed, error)
        if failures:
            raise failures[0]
        return self.progress

"""What following the schema does at a poll (`plan`, a pure function): the source schema's
tables compared with the publications, each table's recorded state and the tables
followed at the last poll (by name and OID), giving the tables to add, to copy again, to
take out of the publication, to report as not publishable, and the ones dropped or
renamed (`cdc.stream.following` acts on it).

A name that stood for another table at the last poll (renamed into it, or dropped and
made again) is copied whole at a snapshot that replaces what its targets hold: they may
hold the rows of the table that had the name before.

A partitioned table that lost rows with no change streamed for them (a partition detached,
dropped, or truncated by itself: `partitions_emptied`) is copied whole at a snapshot that
replaces what its targets hold. A table whose rows changed without a change being
streamed for them (`reshaped`: a column renamed, a column dropped and added again under
its name, a rewrite that added or retyped columns) is copied again at a fresh snapshot:
the copy's version is above every change streamed before it, so it overwrites exactly the
rows from before.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

from cdc.states import TableState
from cdc.stream import eligibility
from cdc.stream.eligibility import Exclusion, Shape, SourceTable

# A load cut short (the daemon stopped while copying, or before it began): copied again
# after a restart; one that was to replace what the targets hold, whole again.
CUT_SHORT = frozenset({TableState.COPYING})
REPLACE_CUT_SHORT = frozenset({TableState.REPLACING})
# Recorded states after which a table that is not published is picked up as new: one
# recorded as to be copied replacing was stopped before it was published; one whose copy
# was cut short was published then, so it is another table of its name now (made again
# while no look at the schema recorded the OIDs: the initial load killed each time).
PICKED_UP_AGAIN = frozenset(
    {TableState.EXCLUDED, TableState.DROPPED, *REPLACE_CUT_SHORT, *CUT_SHORT}
)
# Also picked up as an append-only log: a keyless table an older version quarantined.
LOG_PICKED_UP_AGAIN = PICKED_UP_AGAIN | {TableState.QUARANTINED}


@dataclass(frozen=True)
class Plan:
    add: tuple[str, ...] = ()  # publish, create targets, copy
    add_log: tuple[str, ...] = ()  # the same, in the append publication
    reload: tuple[str, ...] = ()  # published; copy again
    # Published under a name another table had, or set aside with its targets dropped since:
    # copy, replacing.
    recopy: tuple[str, ...] = ()
    shrunk: tuple[str, ...] = ()  # partitions detached, dropped, truncated: copy, replacing
    unpublish: tuple[Exclusion, ...] = ()  # published, but Postgres would refuse its writes
    excluded: tuple[Exclusion, ...] = ()  # newly not publishable: say why, once
    dropped: tuple[str, ...] = ()  # followed, gone from the schema (renamed too)
    renamed: Mapping[str, str] | None = None  # of `dropped`, those renamed: old -> new name
    seen: Mapping[str, frozenset[int]] | None = None  # the tables followed now: partitions
    oids: Mapping[str, int] | None = None  # the tables followed now: their OIDs
    logs: tuple[str, ...] = ()  # the append-only logs followed now
    reshaped: tuple[str, ...] = ()  # published, its rows changed unstreamed: copy again
    why: Mapping[str, str] | None = None  # every table to copy again (the four above): why
    shapes: Mapping[str, Shape] | None = None  # the tables followed now: their shapes


def reshaped(before: Shape, now: Shape) -> str | None:
    """Why a table's rows may differ from what its change stream said, between two looks
    at its `Shape`, or None. A rename keeps a column's number: the stream goes on under the
    new name, and the rows from before hold the values under the old one only. A name at
    another number is a column dropped and added again: every row from before holds its
    default now (also when the name was freed at an earlier look: `Shape.gone`). A
    rewrite that added or retyped columns (ADD COLUMN with a volatile
    DEFAULT, ALTER COLUMN TYPE ... USING) wrote values that no change carries, and so does
    an enum label renamed (ClickHouse holds the label's text). Nothing known before (an
    older record): nothing judged."""
    if not before.columns:
        return None
    old = {number: (name, typ, mod) for number, name, typ, mod in before.columns}
    names = {name for _, name in before.gone} | {name for name, _, _ in old.values()}
    changed = False
    for number, name, typ, mod in now.columns:
        was = old.get(number)
        if was is not None and was[0] != name:
            return f"column {was[0]} renamed to {name}"
        if was is None and name in names:
            return f"column {name} dropped and added again"
        changed = changed or was != (name, typ, mod)
    if changed and before.storage != now.storage:
        return "the table was rewritten with columns added or retyped"
    known = dict(before.labels)
    for typ, labels in now.labels:
        renamed = sorted(set(known.get(typ, ())) - set(labels))
        if renamed:  # labels are renamed, never dropped: ALTER TYPE ... RENAME VALUE
            return f"enum labels renamed: {', '.join(renamed)}"
    return None


def partitions_emptied(before: Shape, now: Shape) -> bool:
    """Whether rows left a partitioned table with no change streamed for them, between two
    looks: a leaf partition detached or dropped, or truncated by itself (pgoutput sends a
    partition's TRUNCATE only as its root's, when the root is truncated), which is seen as
    its files replaced. VACUUM FULL or CLUSTER of a partition look the same: a copy too
    many, never one too few."""
    files = dict(zip(now.leaves, now.storage, strict=False))
    return any(
        files.get(leaf) != file for leaf, file in zip(before.leaves, before.storage, strict=False)
    )


def settled(state: str | None, before: Shape | None, now: Shape) -> bool:
    """Whether a table's targets are to hold its rows as the stream says: no copy of it due
    or under way (its recorded `state`), and no change since the follower's last look
    (`before`: the shape it recorded) that it will copy the table again for. A difference
    found in a table not settled is the follower's to fix, not drift."""
    if state in CUT_SHORT | REPLACE_CUT_SHORT:
        return False
    if before is None:
        return True
    return not partitions_emptied(before, now) and reshaped(before, now) is None


def carried(before: Shape | None, now: Shape) -> Shape:
    """`now`, remembering the names its columns had before (dropped, or renamed) since
    `before` and before it: a name given to a new column at a later look than the one
    that freed it is told apart from a new name (the targets keep a column of that name,
    with the old column's values)."""
    if before is None:
        return now
    live = {(number, name) for number, name, _, _ in now.columns}
    freed = ((n, name) for n, name, _, _ in before.columns if (n, name) not in live)
    return replace(now, gone=tuple(sorted({*before.gone, *freed})))


def _another_table(
    table: SourceTable,
    first_poll: bool,
    seen_oids: Mapping[str, int] | None,
    oids_before: set[int],
) -> tuple[bool, bool]:
    """Whether `table`'s name stood for another table at the last look (at the first poll
    after start: as the last run recorded; nothing recorded: not judged), and whether an
    OID was known for the name."""
    known_oid = seen_oids.get(table.name) if seen_oids is not None else table.oid
    if not first_poll or known_oid is not None:
        return known_oid != table.oid, known_oid is not None
    return table.oid in oids_before, False


def _copy_again(
    table: SourceTable,
    state: str | None,
    replace_it: str | None,
    before: Shape | None,
    seen: Mapping[str, frozenset[int]] | None,
) -> tuple[str, str] | None:
    """Whether a published `table` is copied again, as what (`Plan`'s `recopy`, `shrunk`,
    `reshaped`, `reload`) and why, given its recorded state, why it is to be copied whole
    (`replace_it`: its name stood for another table, or its targets were dropped), its
    shape at the last look, and the partitions seen then (None: the first look after a
    start)."""
    if replace_it is not None:
        return "recopy", replace_it
    if seen is None and state in REPLACE_CUT_SHORT:
        return (
            "recopy",
            "a copy replacing what its targets hold was due (cut short, or asked "
            "for by `cdc rebuild`)",
        )
    if before is not None and partitions_emptied(before, table.shape):
        return (
            "shrunk",
            "partitions detached, dropped or truncated: no change was streamed for their rows",
        )
    if before is not None and (why := reshaped(before, table.shape)) is not None:
        return "reshaped", why
    if seen is None and state in CUT_SHORT:
        return "reload", "a copy was cut short when the daemon stopped"
    # Partitions attached since the last look hold rows no change was streamed for; at the
    # first look after a start, since the last run recorded the table (an older record
    # without its columns: not judged).
    if seen is not None:
        leaves_before = seen.get(table.name, table.partitions)
    elif before is not None and before.columns:
        leaves_before = frozenset(before.leaves)
    else:
        return None
    return ("reload", "partitions attached") if table.partitions - leaves_before else None


def plan(
    tables: list[SourceTable],
    published: set[str],
    recorded: Mapping[str, str],
    seen: Mapping[str, frozenset[int]] | None,
    excluded_before: set[str],
    publishes_changes: bool,
    appended: set[str] | None = None,
    seen_oids: Mapping[str, int] | None = None,
    seen_shapes: Mapping[str, Shape] | None = None,
    rebuilt: Collection[str] = (),
) -> Plan:
    """What to do about the schema's `tables`, given the publication's tables, each table's
    recorded state, the tables followed at the last poll with their partitions (None at the
    first poll after start) and their OIDs (at the first poll: as the last run recorded
    them, None if it did not), the tables already reported excluded, and the append
    publication's tables (None: there is none, so keyless tables are excluded).

    A table in the append publication stays an append-only log even once it has a key
    (its targets are keyed by `_version`): docs/architecture.md says how to convert it.
    `seen_shapes`: the followed tables' shapes at the last poll (at the first: as the last
    run recorded them). `rebuilt`: the tables recorded as set aside whose targets were
    dropped (`cdc.errors.rebuild_steps`): copied whole at the first poll."""
    planner = _Planner(published, recorded, seen, excluded_before, publishes_changes,
                       appended, seen_oids, seen_shapes or {}, rebuilt)  # fmt: skip
    for table in tables:
        planner.table(table)
    return planner.result(tables)


class _Planner:
    """`plan`'s walk over the schema's tables: what each one needs, collected."""

    def __init__(
        self,
        published: set[str],
        recorded: Mapping[str, str],
        seen: Mapping[str, frozenset[int]] | None,
        excluded_before: set[str],
        publishes_changes: bool,
        appended: set[str] | None,
        seen_oids: Mapping[str, int] | None,  # None: not recorded
        seen_shapes: Mapping[str, Shape],
        rebuilt: Collection[str],
    ) -> None:
        self.published, self.recorded, self.seen = published, recorded, seen
        self.excluded_before, self.publishes_changes = excluded_before, publishes_changes
        self.appended, self.seen_oids, self.seen_shapes = appended, seen_oids, seen_shapes
        self.rebuilt = rebuilt
        self.oids_before = set((seen_oids or {}).values())
        self.add: list[str] = []
        self.add_log: list[str] = []
        self.copies: dict[str, list[str]] = {"reload": [], "recopy": [], "shrunk": [],
                                             "reshaped": []}  # fmt: skip
        self.again_why: dict[str, str] = {}
        self.unpublish: list[Exclusion] = []
        self.excluded: list[Exclusion] = []
        self.followed: dict[str, frozenset[int]] = {}
        self.logs: list[str] = []

    def table(self, table: SourceTable) -> None:
        appended, seen = self.appended, self.seen
        why = eligibility.exclusion(table, self.publishes_changes)
        as_log = appended is not None and (
            table.name in appended
            or (why is not None and self.publishes_changes and eligibility.logged_only(table))
        )
        if why is not None and table.name in self.published:
            self.unpublish.append(why)
            return
        if why is not None and not as_log:
            if table.name not in self.excluded_before:
                self.excluded.append(why)
            return
        state = self.recorded.get(table.name)
        listed = appended if as_log and appended is not None else self.published
        another, known = _another_table(table, seen is None, self.seen_oids, self.oids_before)
        if table.name not in listed:
            again = LOG_PICKED_UP_AGAIN if as_log else PICKED_UP_AGAIN
            if state is None or state in again or (another and known):
                (self.add_log if as_log else self.add).append(table.name)
                self.followed[table.name] = table.partitions
                if as_log:
                    self.logs.append(table.name)
            return
        if as_log:
            self.logs.append(table.name)
        self.followed[table.name] = table.partitions
        before = self.seen_shapes.get(table.name)
        replace_it = (
            "another table had its name" if another
            else "set aside, and its targets dropped since"
            if seen is None and table.name in self.rebuilt else None
        )  # fmt: skip
        if (copy := _copy_again(table, state, replace_it, before, seen)) is not None:
            self.copies[copy[0]].append(table.name)
            self.again_why[table.name] = copy[1]

    def result(self, tables: list[SourceTable]) -> Plan:
        followed, copies = self.followed, self.copies
        present = {t.name for t in tables}
        dropped = tuple(sorted(name for name in (self.seen or {}) if name not in present))
        oids = {t.name: t.oid for t in tables if t.name in followed}
        by_oid = {oid: name for name, oid in oids.items()}
        renamed = {
            old: by_oid[oid]
            for old, oid in (self.seen_oids or {}).items()
            if old in dropped and oid in by_oid
        }
        shapes = {
            t.name: carried(self.seen_shapes.get(t.name), t.shape)
            for t in tables
            if t.name in followed
        }
        return Plan(tuple(self.add), tuple(self.add_log), tuple(copies["reload"]),
                    tuple(copies["recopy"]), tuple(copies["shrunk"]), tuple(self.unpublish),
                    tuple(self.excluded), dropped, renamed, followed, oids, tuple(self.logs),
                    tuple(copies["reshaped"]), self.again_why, shapes)  # fmt: skip

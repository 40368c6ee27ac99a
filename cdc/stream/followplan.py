"""What following the schema does at a poll (`plan`, a pure function): the source schema's
tables compared with the publications, each table's recorded state and the tables
followed at the last poll (by name and OID), giving the tables to add, to copy again, to
take out of the publication, to report as not publishable, and the ones dropped or
renamed (`cdc.stream.following` acts on it).

A name that stood for another table at the last poll (renamed into it, or dropped and
made again) is copied whole at a snapshot that replaces what its targets hold: they may
hold the rows of the table that had the name before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cdc.states import TableState
from cdc.stream import eligibility
from cdc.stream.eligibility import Exclusion, SourceTable

# Recorded states after which a table that is not published is picked up as new.
PICKED_UP_AGAIN = frozenset({TableState.EXCLUDED, TableState.DROPPED})
# A load cut short (the daemon stopped while copying): copied again after a restart.
CUT_SHORT = frozenset({TableState.COPYING})
# Also picked up as an append-only log: a keyless table an older version quarantined.
LOG_PICKED_UP_AGAIN = PICKED_UP_AGAIN | {TableState.QUARANTINED}


@dataclass(frozen=True)
class Plan:
    add: tuple[str, ...] = ()  # publish, create targets, copy
    add_log: tuple[str, ...] = ()  # the same, in the append publication
    reload: tuple[str, ...] = ()  # published; copy again
    recopy: tuple[str, ...] = ()  # published under a name another table had: copy, replacing
    unpublish: tuple[Exclusion, ...] = ()  # published, but Postgres would refuse its writes
    excluded: tuple[Exclusion, ...] = ()  # newly not publishable: say why, once
    dropped: tuple[str, ...] = ()  # followed, gone from the schema (renamed too)
    renamed: Mapping[str, str] | None = None  # of `dropped`, those renamed: old -> new name
    seen: Mapping[str, frozenset[int]] | None = None  # the tables followed now: partitions
    oids: Mapping[str, int] | None = None  # the tables followed now: their OIDs
    logs: tuple[str, ...] = ()  # the append-only logs followed now


def plan(
    tables: list[SourceTable],
    published: set[str],
    recorded: Mapping[str, str],
    seen: Mapping[str, frozenset[int]] | None,
    excluded_before: set[str],
    publishes_changes: bool,
    appended: set[str] | None = None,
    seen_oids: Mapping[str, int] | None = None,
) -> Plan:
    """What to do about the schema's `tables`, given the publication's tables, each table's
    recorded state, the tables followed at the last poll with their partitions (None at the
    first poll after start) and their OIDs (at the first poll: as the last run recorded
    them, None if it did not), the tables already reported excluded, and the append
    publication's tables (None: there is none, so keyless tables are excluded).

    A table in the append publication stays an append-only log even once it has a key
    (its targets are keyed by `_version`): docs/architecture.md says how to convert it."""
    add: list[str] = []
    add_log: list[str] = []
    reload: list[str] = []
    recopy: list[str] = []
    oids_before = set((seen_oids or {}).values())
    unpublish: list[Exclusion] = []
    excluded: list[Exclusion] = []
    followed: dict[str, frozenset[int]] = {}
    logs: list[str] = []
    for table in tables:
        why = eligibility.exclusion(table, publishes_changes)
        as_log = appended is not None and (
            table.name in appended
            or (why is not None and publishes_changes and eligibility.logged_only(table))
        )
        if why is not None and table.name in published:
            unpublish.append(why)
            continue
        if why is not None and not as_log:
            if table.name not in excluded_before:
                excluded.append(why)
            continue
        state = recorded.get(table.name)
        listed = appended if as_log and appended is not None else published
        known_oid = seen_oids.get(table.name) if seen_oids is not None else table.oid
        if seen is not None:  # another table had this name at the last poll (or none)
            another = known_oid != table.oid
        else:  # the first poll: as the last run recorded (nothing said: not judged)
            another = known_oid != table.oid if known_oid is not None else table.oid in oids_before
        if table.name not in listed:
            again = LOG_PICKED_UP_AGAIN if as_log else PICKED_UP_AGAIN
            if state is None or state in again or (another and known_oid is not None):
                (add_log if as_log else add).append(table.name)
                followed[table.name] = table.partitions
                if as_log:
                    logs.append(table.name)
            continue
        if as_log:
            logs.append(table.name)
        followed[table.name] = table.partitions
        if another:
            recopy.append(table.name)
        elif seen is None:
            if state in CUT_SHORT:
                reload.append(table.name)
        elif table.partitions - seen.get(table.name, table.partitions):
            reload.append(table.name)
    present = {t.name for t in tables}
    dropped = tuple(sorted(name for name in (seen or {}) if name not in present))
    oids = {t.name: t.oid for t in tables if t.name in followed}
    by_oid = {oid: name for name, oid in oids.items()}
    renamed = {
        old: by_oid[oid]
        for old, oid in (seen_oids or {}).items()
        if old in dropped and oid in by_oid
    }
    return Plan(tuple(add), tuple(add_log), tuple(reload), tuple(recopy), tuple(unpublish),
                tuple(excluded), dropped, renamed, followed, oids, tuple(logs))  # fmt: skip

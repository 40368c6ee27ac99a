"""The states a table and the daemon are recorded in, one name for each.

Recorded in historic's state tables (`_cdc_tables`, `_cdc_daemon`) by the daemon, the
backfill and the schema follower; read by `cdc status`. The values are what the tables
hold, so a state recorded by an older release reads the same.
"""

from __future__ import annotations

from enum import StrEnum


class TableState(StrEnum):
    # Recorded.
    COPYING = "copying"  # a backfill copies it (cut short if the copy stopped)
    # To be copied whole, replacing what its targets hold (another table's rows, under
    # its name before): until the targets are emptied below the copy's snapshot.
    REPLACING = "replacing"
    READY = "ready"  # copied; its streamed changes are applied
    STREAMING = "streaming"  # picked up by the daemon, streamed from the start
    QUARANTINED = "quarantined"  # its rows cannot be stored; the others flow
    FAILED = "failed"  # its copy failed
    EXCLUDED = "excluded"  # not publishable as it is (the recorded error says the fix)
    DROPPED = "dropped"  # gone from the source schema; its targets are kept
    # Shown by `cdc status` only.
    LOADING = "loading"  # published, being copied
    NOT_PUBLISHED = "not published"  # taken out of the publication by hand
    NEW = "new"  # the running daemon picks it up at its next look at the schema


class DaemonState(StrEnum):
    STREAMING = "streaming"
    STOPPED = "stopped"
    FAILED = "failed"

"""A table's targets dropped, to be made again and copied whole: `cdc rebuild`.

The fix for a table set aside because its targets cannot follow a change of it (a type
changed in a way they do not follow, a key gained, lost or changed): its historic table
and ClickHouse table, with their `_current` views (and the Distributed table on a
cluster), are dropped, and the table is recorded as to be copied whole, replacing
(`replacing`), so the daemon's next start makes its targets as the table is now and
copies it at a fresh snapshot, the changes made while it was set aside included. Views of
others on the targets are not dropped with them: Postgres refuses (RESTRICT), and the
message names them.
"""

from __future__ import annotations

from typing import Any

import psycopg

from cdc.errors import CdcError, ErrorKind
from cdc.ops import status
from cdc.ops.settings import Settings, redact_url
from cdc.sinks import ddl
from cdc.sinks.clickhouse import client as clickhouse
from cdc.sinks.clickhouse import ddl as clickhouse_ddl
from cdc.sinks.historic import ddl as historic_ddl
from cdc.states import TableState
from cdc.stream.session import canonical_dsn


def drop_targets(settings: Settings, table: str) -> list[str]:
    """Drop `table`'s targets and record it as to be copied whole; returns what was
    dropped (nothing: there was nothing to drop, the record is made all the same)."""
    schema = settings.historic_schema
    dropped: list[str] = []
    try:
        with psycopg.connect(canonical_dsn(settings.require_historic_dsn())) as conn:
            dropped += _drop_historic(conn, schema, table)
            conn.commit()
    except psycopg.errors.DependentObjectsStillExist as exc:
        raise CdcError(
            ErrorKind.CONFIG,
            f"{schema}.{table} is used by other objects, which are not dropped with it: "
            f"{str(exc).strip()}; drop or change them first, then run this again",
        ) from exc
    except psycopg.Error as exc:
        raise CdcError(
            ErrorKind.SINK_CONNECTION,
            f"cannot drop {schema}.{table}: {redact_url(str(exc).strip())}",
        ) from exc
    dropped += _drop_clickhouse(settings, table)
    why = "targets dropped by `cdc rebuild`: copied whole at the next start"
    status.record_table(settings.require_historic_dsn(), schema, table, TableState.REPLACING, why)
    return dropped


def _drop_historic(conn: psycopg.Connection[Any], schema: str, table: str) -> list[str]:
    view = ddl.current_view_name(table)
    found = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = ANY(%s) ORDER BY c.relkind = 'v' DESC",
        (schema, [view, table]),
    ).fetchall()
    conn.execute(historic_ddl.historic_drop_current_view(schema, table))
    conn.execute(historic_ddl.historic_drop_table(schema, table))
    return [f"{schema}.{name}" for (name,) in found]


def _drop_clickhouse(settings: Settings, table: str) -> list[str]:
    database, cluster = settings.clickhouse_database, settings.clickhouse_cluster
    client = clickhouse.connect(settings.require_clickhouse_url())
    try:
        names = [ddl.current_view_name(table), table]
        if cluster is not None:
            names.insert(1, clickhouse_ddl.distributed_name(table))
        present = {
            row[0]
            for row in client.query(
                "SELECT name FROM system.tables WHERE database = {db:String}",
                parameters={"db": database},
            ).result_rows
        }
        dropped = []
        for name in names:
            if name in present:
                client.command(clickhouse_ddl.clickhouse_drop(database, name, cluster))
                dropped.append(f"ClickHouse {database}.{name}")
        return dropped
    finally:
        client.close()

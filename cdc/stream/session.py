"""The session every connection to Postgres runs with: settings that make the text form of
each value canonical, the same in the replication stream, a backfill's COPY, the sinks'
writes and the checks, whatever the server's or role's defaults.
"""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict, make_conninfo

# The walsender prints values with its session's settings; every other connection takes
# the same ones, so a value's text is the same whichever connection read it.
CANONICAL_TEXT_OPTIONS = (
    "-c DateStyle=ISO,MDY -c TimeZone=UTC -c IntervalStyle=postgres "
    "-c extra_float_digits=3 -c bytea_output=hex"
)


def canonical_dsn(dsn: str) -> str:
    """`dsn` with `CANONICAL_TEXT_OPTIONS` appended to its `options`."""
    params = conninfo_to_dict(dsn)
    existing = str(params.get("options") or "")
    return make_conninfo(dsn, options=f"{existing} {CANONICAL_TEXT_OPTIONS}".strip())

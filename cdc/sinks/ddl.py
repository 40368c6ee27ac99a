"""DDL for the targets, built by pure functions: what both targets share.

Every target table holds the source columns plus `_version` (`(commit_lsn << 64) |
ordinal`; numeric(39,0) in Postgres, UInt128 in ClickHouse), `_is_deleted` and
`_commit_time`. An append-only log (a table without a key) is keyed by `_version` in both:
a replay writes the same versions again. A `<table>_current` view shows live rows newer
than the table's truncate watermark in `_cdc_truncations`; its name is the same in both
(`current_view_name`). Each target's DDL is in its package: `cdc.sinks.historic.ddl`,
`cdc.sinks.clickhouse.ddl`.
"""

from __future__ import annotations

import hashlib
from typing import Final

from cdc.schema import CURRENT_VIEW_SUFFIX

PG_MAX_IDENTIFIER_BYTES: Final = 63  # NAMEDATALEN - 1; longer names are truncated silently


def current_view_name(table_name: str) -> str:
    """`<table>_current`, the same in both targets. A table name that leaves no room for
    the suffix in Postgres' 63 bytes (Postgres would cut the view's name short, and two
    such tables would share one) is cut short itself, followed by a hash of the whole
    name: `<start of the name>_<8 hex digits>_current`."""
    name = table_name + CURRENT_VIEW_SUFFIX
    if len(name.encode()) <= PG_MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.blake2b(table_name.encode(), digest_size=4).hexdigest()
    room = PG_MAX_IDENTIFIER_BYTES - len(CURRENT_VIEW_SUFFIX) - len(digest) - 1
    start = table_name.encode()[:room].decode(errors="ignore")  # whole characters only
    return f"{start}_{digest}{CURRENT_VIEW_SUFFIX}"

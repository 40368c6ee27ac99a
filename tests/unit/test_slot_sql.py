"""The SQL that creates the pipeline's slot, per server version (only Postgres 15 runs
here: the choice for other versions is checked on the text)."""

from __future__ import annotations

import pytest

from cdc.stream.slots import create_slot_query
from cdc.stream.snapshot import create_slot_sql


@pytest.mark.parametrize(
    ("version", "temporary", "expected"),
    [
        (140000, False, 'CREATE_REPLICATION_SLOT "s" LOGICAL "pgoutput" EXPORT_SNAPSHOT'),
        (150000, False, "CREATE_REPLICATION_SLOT \"s\" LOGICAL \"pgoutput\" (SNAPSHOT 'export')"),
        (160004, True,
         "CREATE_REPLICATION_SLOT \"s\" TEMPORARY LOGICAL \"pgoutput\" (SNAPSHOT 'export')"),
        (170000, False,
         "CREATE_REPLICATION_SLOT \"s\" LOGICAL \"pgoutput\" (SNAPSHOT 'export', FAILOVER true)"),
        # A temporary slot ends with its session: never a failover slot.
        (170002, True,
         "CREATE_REPLICATION_SLOT \"s\" TEMPORARY LOGICAL \"pgoutput\" (SNAPSHOT 'export')"),
    ],
)  # fmt: skip
def test_replication_command(version: int, temporary: bool, expected: str) -> None:
    assert create_slot_sql("s", temporary, version).as_string() == expected


def test_sql_function() -> None:
    assert "failover" not in create_slot_query(150018)
    assert "failover => true" in create_slot_query(170000)

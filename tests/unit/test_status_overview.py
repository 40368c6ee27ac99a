"""`cdc status`: every table of the source schema with its state, from the catalog's facts,
the publication and the recorded states (pure, no database)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from cdc.ops.status import TableRecord, overview
from cdc.stream.eligibility import Exclusion, SourceTable

NOW = datetime(2026, 12, 5, tzinfo=UTC)
T = SourceTable("t", "director.t", False, False, "d", True, ())


def test_each_table_gets_one_state() -> None:
    tables = [replace(T, name=n) for n in ("loading", "live", "odd", "nokey", "out", "new")]
    recorded = [
        TableRecord("loading", "copying", None, NOW),
        TableRecord("live", "ready", None, NOW),
        TableRecord("odd", "quarantined", "bad value", NOW),
        TableRecord("out", "ready", None, NOW),
        TableRecord("old", "ready", None, NOW),
    ]
    nokey = Exclusion("nokey", "no primary key", "ALTER TABLE director.nokey ADD PRIMARY KEY (...)")
    shown = overview(tables, {"nokey": nokey}, {"loading", "live", "odd"}, recorded)
    assert [(s.table, s.state) for s in shown] == [
        ("loading", "loading"),
        ("live", "streaming"),
        ("odd", "quarantined"),
        ("nokey", "excluded"),
        ("out", "not published"),
        ("new", "new"),
        ("old", "dropped"),
    ]
    assert shown[3].error == (
        "no primary key; fix: ALTER TABLE director.nokey ADD PRIMARY KEY (...)"
    )
    assert shown[2].error == "bad value"

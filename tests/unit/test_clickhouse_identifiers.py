"""ClickHouse identifier quoting and URL parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc.errors import CdcError, ErrorKind
from cdc.sinks.clickhouse.client import connect, embedded_path, quote_identifier


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("scores", "`scores`"),
        ("Upper Case", "`Upper Case`"),
        ("back`tick", "`back\\`tick`"),
        ("back\\slash", "`back\\\\slash`"),
        ("ünï", "`ünï`"),
    ],
)
def test_quote_identifier(name: str, quoted: str) -> None:
    assert quote_identifier(name) == quoted


def test_embedded_path_resolves_relative_paths() -> None:
    assert embedded_path("chdb://.stack/clickhouse") == Path(".stack/clickhouse").resolve()
    assert embedded_path("chdb:///abs/ch") == Path("/abs/ch")
    assert embedded_path("http://h:8123") is None


def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(CdcError, match="must start with chdb://") as info:
        connect("ftp://user:pw@h")
    assert info.value.kind is ErrorKind.CONFIG
    assert "pw" not in str(info.value)

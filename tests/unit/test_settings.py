"""Settings precedence, validation messages and secret redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc.errors import CdcError, ErrorKind
from cdc.ops.settings import Settings, load_settings, redact_url
from cdc.stream.session import canonical_dsn, shown_dsn


def test_defaults_without_file_or_env(tmp_path: Path) -> None:
    settings = load_settings(stack_dir=tmp_path)
    assert settings.source_schema == "director"
    assert settings.historic_schema == "historic"
    assert settings.source_dsn is None
    with pytest.raises(CdcError, match="CDC_SOURCE_DSN") as info:
        settings.require_source_dsn()
    assert info.value.kind is ErrorKind.CONFIG


def test_env_overrides_file_which_overrides_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "stack.json").write_text(
        '{"dsn": "postgresql://stack/db", "clickhouse_url": "chdb:///x"}'
    )
    config = tmp_path / "cdc.toml"
    config.write_text('slot = "from_file"\npublication = "pub_file"\nbatch_size = 5\n')
    monkeypatch.setenv("CDC_SLOT", "from_env")
    settings = load_settings(config, stack_dir=tmp_path)
    assert settings.slot == "from_env"
    assert settings.publication == "pub_file"
    assert settings.batch_size == 5
    assert settings.require_source_dsn() == "postgresql://stack/db"
    assert settings.require_historic_dsn() == "postgresql://stack/db"


def test_unknown_key_is_named_with_the_known_ones(tmp_path: Path) -> None:
    config = tmp_path / "cdc.toml"
    config.write_text('slott = "x"\n')
    with pytest.raises(CdcError, match="'slott' is not a setting") as info:
        load_settings(config, stack_dir=tmp_path)
    assert "publication" in str(info.value)
    assert info.value.kind is ErrorKind.CONFIG


def test_malformed_file_and_bad_values(tmp_path: Path) -> None:
    config = tmp_path / "cdc.toml"
    config.write_text("slot = \n")
    with pytest.raises(CdcError, match="not valid TOML"):
        load_settings(config, stack_dir=tmp_path)
    config.write_text("batch_size = 0\n")
    with pytest.raises(CdcError, match="'batch_size'"):
        load_settings(config, stack_dir=tmp_path)
    with pytest.raises(CdcError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", stack_dir=tmp_path)


def test_a_dsn_libpq_cannot_read_is_refused_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not retried later as an unreachable database, nor a traceback: a config error that
    names the setting, without the password."""
    monkeypatch.setenv("CDC_HISTORIC_DSN", "postgresql://u:secret@h:5432/db dbname=x")
    with pytest.raises(CdcError, match=r"'historic_dsn'.*not a Postgres connection") as info:
        load_settings(stack_dir=tmp_path)
    assert info.value.kind is ErrorKind.CONFIG and "secret" not in str(info.value)
    monkeypatch.setenv("CDC_HISTORIC_DSN", "postgresql://h/db")
    monkeypatch.setenv("CDC_SOURCE_DSN", "host=h dbname=db")
    assert load_settings(stack_dir=tmp_path).require_historic_dsn() == "postgresql://h/db"


def test_secrets_are_redacted_in_repr() -> None:
    settings = Settings(source_dsn="postgresql://u:hunter2@h/db")  # type: ignore[arg-type]
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:hunter2@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("http://default:s3cr%40t@ch:8123", "http://default:***@ch:8123"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("host=h password=hunter2 dbname=x", "host=h password=*** dbname=x"),
        ("chdb:///tmp/x", "chdb:///tmp/x"),
        ("failed: postgresql://u:pw@h/db gone", "failed: postgresql://u:***@h/db gone"),
        ("host=h password='a b' x=1", "host=h password=*** x=1"),
        ("no secrets here", "no secrets here"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_secrets_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "dsn"
    secret.write_text("postgresql://u:from-file@h/db\n")
    monkeypatch.setenv("CDC_SOURCE_DSN_FILE", str(secret))
    settings = load_settings(stack_dir=tmp_path)
    assert settings.require_source_dsn() == "postgresql://u:from-file@h/db"
    monkeypatch.setenv("CDC_SOURCE_DSN_FILE", str(tmp_path / "missing"))
    with pytest.raises(CdcError, match="CDC_SOURCE_DSN_FILE: cannot read"):
        load_settings(stack_dir=tmp_path)


def test_a_dsn_in_a_message_is_the_users_without_the_session_options() -> None:
    """The options every session adds (canonical text, no timeouts) made an error message
    about a connection three lines long; the user's own options stay, the password not."""
    session = canonical_dsn("postgresql://u:pw@h:5/db?options=-c%20search_path%3Dx")
    assert "statement_timeout=0" in session
    assert shown_dsn(session) == "user=u password=*** dbname=db host=h port=5 " + (
        "options='-c search_path=x'"
    )
    assert shown_dsn(canonical_dsn("postgresql://u@h/db")) == "user=u dbname=db host=h"

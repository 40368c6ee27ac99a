"""Settings: one frozen object, loaded once from a TOML file and then the environment.

Precedence, lowest first: built-in defaults, the local stack's record (`.stack/stack.json`,
written by `cdc stack up`) for the DSNs, the TOML file given with `--config`, then `CDC_*`
environment variables. Secrets (DSNs, URLs with passwords) are `SecretStr`, so their
`repr` is redacted; `redact_url` renders them for logs without the password.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cdc.errors import CdcError, ErrorKind

STACK_DIR = Path(".stack")
ENV_PREFIX = "CDC_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    source_dsn: SecretStr | None = None
    source_schema: str = "director"
    historic_dsn: SecretStr | None = None
    historic_schema: str = "historic"
    # No default outside the local stack (`make up` records its own): data must never go
    # silently to an embedded engine under the working directory.
    clickhouse_url: SecretStr | None = None
    clickhouse_database: str = "analytics"
    clickhouse_cluster: str | None = None  # set: ON CLUSTER DDL, Replicated + Distributed
    slot: str = "cdc"
    publication: str = "cdc"
    batch_size: int = Field(default=20_000, ge=1)
    batch_latency_ms: int = Field(default=200, ge=1)
    memory_budget_mb: int = Field(default=256, ge=1)
    historic_writers: int = Field(default=2, ge=1, le=16)  # connections writing a large batch
    status_interval_s: float = Field(default=5.0, gt=0)
    initial_load: bool = True
    max_retry_delay_s: float = Field(default=30.0, gt=0)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"  # deployments that scrape from outside set 0.0.0.0
    ready_max_lag_s: float = Field(default=60.0, gt=0)
    connect_timeout_s: float = Field(default=60.0, gt=0)  # at start: then it is a setup error
    heartbeat_interval_s: float = Field(default=30.0, ge=0)  # 0: no heartbeat
    # How often the source schema is compared with the publication (new, dropped and
    # re-partitioned tables are followed without a restart); 0: never.
    schema_poll_interval_s: float = Field(default=5.0, ge=0)
    # The drift monitor: one pass over every published table per interval (0: off), reading
    # at most this many source rows a second; confirmed drift repaired when asked.
    monitor_interval_s: float = Field(default=600.0, ge=0)
    monitor_rows_per_s: int = Field(default=5_000, ge=100)
    monitor_repair: bool = False
    backfill_workers: int = Field(default=2, ge=1, le=64)
    backfill_chunk_size: int = Field(default=50_000, ge=1)
    backfill_batch_mb: int = Field(default=32, ge=0)  # rows held per ClickHouse insert
    # The coaching API's bearer tokens: a file with one token per line (blank lines and
    # lines starting with `#` ignored). Required by the API.
    api_tokens_file: Path | None = None

    @field_validator("source_dsn", "historic_dsn")
    @classmethod
    def _parses(cls, dsn: SecretStr | None) -> SecretStr | None:
        """A DSN libpq cannot read fails here, naming the setting, not later as a database
        that is unreachable (retried) or as a traceback."""
        if dsn is not None:
            try:
                conninfo_to_dict(dsn.get_secret_value())
            except psycopg.Error as exc:
                why = redact_url(str(exc).strip())
                raise ValueError(
                    f"not a Postgres connection string libpq reads ({why}); write it as "
                    "postgresql://user@host:port/dbname or host=... dbname=..."
                ) from None
        return dsn

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides what the file (passed as init values) says.
        return (env_settings, init_settings)

    def require_source_dsn(self) -> str:
        if self.source_dsn is None:
            raise CdcError(
                ErrorKind.CONFIG,
                "no source database: set CDC_SOURCE_DSN (or source_dsn in the --config file), "
                "or run `make up` to start the local stack",
            )
        return self.source_dsn.get_secret_value()

    def require_clickhouse_url(self) -> str:
        """The ClickHouse URL, `chdb://` paths made absolute."""
        if self.clickhouse_url is None:
            raise CdcError(
                ErrorKind.CONFIG,
                "no ClickHouse: set CDC_CLICKHOUSE_URL (or clickhouse_url in the --config "
                "file) to http(s)://user:password@host:port, or chdb:///absolute/path for "
                "the embedded engine",
            )
        url = self.clickhouse_url.get_secret_value()
        prefix = "chdb://"
        if url.startswith(prefix):
            return prefix + str(Path(url[len(prefix) :]).resolve())
        return url

    def require_historic_dsn(self) -> str:
        if self.historic_dsn is not None:
            return self.historic_dsn.get_secret_value()
        return self.require_source_dsn()


def _stack_defaults(stack_dir: Path) -> dict[str, Any]:
    state_file = stack_dir / "stack.json"
    if not state_file.exists():
        return {}
    state = json.loads(state_file.read_text())
    return {"source_dsn": state["dsn"], "clickhouse_url": state["clickhouse_url"]}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise CdcError(ErrorKind.CONFIG, f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CdcError(ErrorKind.CONFIG, f"config file {path} is not valid TOML: {exc}") from exc


def _describe(error: ValidationError, origin: str) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            known = ", ".join(sorted(Settings.model_fields))
            problems.append(f"'{key}' is not a setting (known settings: {known})")
        else:
            problems.append(f"'{key}': {item['msg']}")
    return f"invalid settings in {origin}: " + "; ".join(problems)


SECRET_SETTINGS = ("source_dsn", "historic_dsn", "clickhouse_url")


def _secret_files(environ: Mapping[str, str]) -> dict[str, str]:
    """`CDC_<SECRET>_FILE=/path` reads that secret from a file (a mounted Kubernetes or
    Docker secret), so it never has to be in the environment or the config file."""
    values: dict[str, str] = {}
    for name in SECRET_SETTINGS:
        path = environ.get(f"{ENV_PREFIX}{name.upper()}_FILE")
        if not path:
            continue
        try:
            values[name] = Path(path).read_text().strip()
        except OSError as exc:
            raise CdcError(
                ErrorKind.CONFIG, f"{ENV_PREFIX}{name.upper()}_FILE: cannot read {path}: {exc}"
            ) from exc
    return values


# `CDC_*` variables that are not settings: read by the local stack (`CDC_STACK_PORT`,
# `CDC_PG_BINDIR`) and by fault-injection tests (`CDC_FAULTS`); and prefixes that the test
# suite and the benchmarks keep for themselves.
OTHER_VARIABLES = frozenset({"CDC_STACK_PORT", "CDC_PG_BINDIR", "CDC_FAULTS"})
OTHER_PREFIXES = ("CDC_TEST_", "CDC_MODEL_", "CDC_BENCH_")


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """`CDC_*` variables that name no setting: a misspelt one would otherwise be ignored."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    known |= {f"{ENV_PREFIX}{name.upper()}_FILE" for name in SECRET_SETTINGS}
    return sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() not in known | OTHER_VARIABLES
        and not name.upper().startswith(OTHER_PREFIXES)
    )


def load_settings(
    config_file: Path | None = None,
    stack_dir: Path = STACK_DIR,
    environ: Mapping[str, str] = os.environ,
) -> Settings:
    if unknown := unknown_variables(environ):
        known = ", ".join(ENV_PREFIX + name.upper() for name in Settings.model_fields)
        raise CdcError(
            ErrorKind.CONFIG,
            f"unknown environment variable{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}: not a setting (known: {known}; secrets also as "
            f"<NAME>_FILE)",
        )
    values = _stack_defaults(stack_dir)
    origin = f"CDC_* environment variables{' or ' + str(config_file) if config_file else ''}"
    if config_file is not None:
        values.update(_read_toml(config_file))
    values.update(_secret_files(environ))
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise CdcError(ErrorKind.CONFIG, _describe(exc, origin)) from exc


_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]*(?P<at>@)")
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I)


def redact_url(text: str) -> str:
    """`text` with every password replaced by `***`: in URLs (`scheme://user:pw@host`) and in
    key/value DSNs (`password=pw`), also when they appear inside a longer message."""
    text = _URL_PASSWORD.sub(r"\g<head>***\g<at>", text)
    return _KEYWORD_PASSWORD.sub(r"\g<head>***", text)

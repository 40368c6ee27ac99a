"""The deployment files name only commands, options and settings that exist.

No container engine runs the files here, so they are parsed: every `cdc ...` command line
(compose `command`, Kubernetes `args`, the systemd `ExecStart`) must parse with the real
CLI, every `CDC_*` variable must be a setting (or a secret's `_FILE`), and a TOML config in
a ConfigMap must hold known settings only.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cdc.cli import app
from cdc.ops.settings import Settings, unknown_variables

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE_FILES = [
    DEPLOY / "docker-compose.yml",
    DEPLOY / "clickhouse-cluster" / "docker-compose.yml",
]
SYSTEMD = DEPLOY / "systemd" / "cdc.service"
KUBERNETES = DEPLOY / "kubernetes" / "cdc.yaml"


def compose_services() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in COMPOSE_FILES:
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            yield f"{path.relative_to(DEPLOY)}:{name}", service


def kubernetes_documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(KUBERNETES.read_text()) if d]


def kubernetes_containers() -> Iterator[dict[str, Any]]:
    for document in kubernetes_documents():
        if document["kind"] in ("Deployment", "StatefulSet"):
            yield from document["spec"]["template"]["spec"]["containers"]


def command_lines() -> list[tuple[str, list[str]]]:
    """Every `cdc` command line in the deployment files, as argv."""
    found = []
    for where, service in compose_services():
        command = service.get("command")
        if isinstance(command, list) and command and command[0] == "cdc":
            found.append((where, command))
    for container in kubernetes_containers():
        argv = [*container.get("command", []), *container.get("args", [])]
        if argv and argv[0] == "cdc":
            found.append((f"kubernetes:{container['name']}", argv))
    for line in SYSTEMD.read_text().splitlines():
        if line.startswith("ExecStart="):
            argv = shlex.split(line.removeprefix("ExecStart="))
            found.append(("systemd", ["cdc", *argv[1:]]))
    return found


def variables() -> list[tuple[str, str]]:
    """Every environment variable the deployment files set."""
    found = []
    for where, service in compose_services():
        environment = service.get("environment") or {}
        names = environment if isinstance(environment, dict) else [
            item.split("=", 1)[0] for item in environment
        ]  # fmt: skip
        found += [(where, name) for name in names]
    for document in kubernetes_documents():
        if document["kind"] == "Secret":
            found += [("kubernetes:secret", name) for name in document.get("stringData", {})]
    for container in kubernetes_containers():
        found += [("kubernetes", e["name"]) for e in container.get("env", [])]
    for line in SYSTEMD.read_text().splitlines():
        if line.startswith("Environment="):
            found.append(("systemd", line.removeprefix("Environment=").split("=", 1)[0]))
    return found


def test_the_files_have_command_lines_and_variables() -> None:
    assert len(command_lines()) >= 4
    assert len([name for _, name in variables() if name.startswith("CDC_")]) >= 8


@pytest.mark.parametrize(("where", "argv"), command_lines(), ids=lambda v: str(v))
def test_every_cdc_command_line_parses(where: str, argv: list[str]) -> None:
    # `--help` after the whole line: the real parser checks every command and option
    # before it prints the help (an unknown one is exit code 2).
    result = CliRunner().invoke(app, [*argv[1:], "--help"])
    assert result.exit_code == 0, f"{where}: `{shlex.join(argv)}` does not parse: {result.output}"


def test_every_variable_is_a_setting() -> None:
    names = {name for _, name in variables() if name.startswith("CDC_")}
    unknown = unknown_variables(dict.fromkeys(names, ""))
    assert not unknown, f"not settings: {unknown}"


def test_the_config_map_holds_known_settings() -> None:
    maps = [d for d in kubernetes_documents() if d["kind"] == "ConfigMap"]
    assert maps
    for document in maps:
        for name, text in document["data"].items():
            if name.endswith(".toml"):
                values = tomllib.loads(text)
                assert set(values) <= set(Settings.model_fields), name
                Settings(**values)  # and valid values


def test_the_image_installs_what_its_commands_need() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    # The compose file runs the API from the same image: its extra must be installed.
    uses_api = any("uvicorn" in str(s.get("command")) for _, s in compose_services())
    assert not uses_api or re.search(r"cdc\[[^\]]*\bapi\b", dockerfile), dockerfile

"""Optional parts of cdc, installed as extras: a command that needs one imports it late
and, when it is missing, says which extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

import typer

EXTRAS = {
    "embedded": "the embedded ClickHouse engine (chdb), for chdb:// URLs and the local stack",
    "api": "the coaching API (FastAPI, uvicorn)",
    "demo": "`cdc demo` (the API, its HTTP client and the embedded engine)",
}


def require_extra(extra: str, *modules: str) -> ModuleType:
    """Import `modules` and return the first, or end the command saying which extra
    provides them."""
    try:
        imported = [importlib.import_module(module) for module in modules]
    except ImportError as exc:
        typer.secho(
            f"error: this needs {EXTRAS[extra]}, which is not installed ({exc.name} is "
            f"missing): pip install 'cdc[{extra}]'",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(code=1) from exc
    return imported[0]

"""The `cdc` command line: parses arguments, wires up `cdc` objects and reports.

Logic lives in the rest of the `cdc` package; each command group is a typer sub-app in a
module of its own, registered on `app` when this package is imported.
"""

from cdc.cli import demo, pipeline, publication, slot, stack, status
from cdc.cli.app import app

__all__ = ["app", "demo", "pipeline", "publication", "slot", "stack", "status"]

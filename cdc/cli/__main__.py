"""`python -m cdc.cli ...`: the same command as the installed `cdc`."""

from cdc.cli import app

app(prog_name="cdc")

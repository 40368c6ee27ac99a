"""`python cli.py ...` from a checkout: the same command as the installed `cdc`."""

from cdc.cli import app

if __name__ == "__main__":
    app()

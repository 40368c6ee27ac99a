"""Watching the targets: that they equal the source, and how far behind it they are.

`position` keeps what both targets hold (a WAL position and a source commit time), fed by
the daemon; `monitor` walks the published tables in key ranges in the background, compares
source, historic and ClickHouse with `cdc.check.verify`'s count and row-hash machinery, and
reports (and optionally repairs) the drift it confirms (DESIGN.md invariant 9).
"""

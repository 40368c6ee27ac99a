"""Watching the targets: that they equal the source, and how far behind it they are.

`position` keeps what both targets hold (a WAL position and a source commit time), fed by
the daemon. Comparing rests on pure parts: `rowhash` (row hashes both engines compute
alike), `keyrange` (key ranges in an order both share), `rangequery` (the queries that
read a range) and `drift` (differences per key, the report); `stores` runs the queries
against source, historic and ClickHouse. `verify` compares whole tables on demand and
`repair` copies drifted ranges again; `monitor` walks the published tables in the
background (`pacing` its pace, `rangecheck` one step, `sourceread` the source rows a
step keeps), and reports (and optionally
repairs) the drift it confirms (DESIGN.md invariant 9).
"""

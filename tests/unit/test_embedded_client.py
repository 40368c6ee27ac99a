"""The embedded engine's client, started without importing what it does not use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
from cdc.sinks.clickhouse import client
c = client.connect(sys.argv[1])
assert c.query("SELECT 40 + 2").result_rows == [(42,)]
c.command("CREATE TABLE t (n UInt8) ENGINE = MergeTree ORDER BY n")
c.raw_insert("t", ["n"], insert_block=b"1\\n2\\n", fmt="TabSeparated")
assert c.query("SELECT sum(n) FROM t").result_rows == [(3,)]
print(sorted(m for m in ("pyarrow", "numpy") if m in sys.modules))
import pyarrow  # still importable by whoever needs it
"""


def test_the_engine_starts_without_pyarrow_and_leaves_it_importable(tmp_path: Path) -> None:
    # A process of its own: one embedded data path per process, and pyarrow not yet
    # imported by anything else.
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, f"chdb://{tmp_path / 'ch'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

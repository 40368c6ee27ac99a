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


HOLD = """
import sys, time
from cdc.sinks.clickhouse import client
c = client.connect(sys.argv[1])
c.query("SELECT 1")
print("open", flush=True)
time.sleep(120)
"""

OPEN = """
import sys
from cdc.errors import CdcError
from cdc.sinks.clickhouse import client
try:
    client.connect(sys.argv[1])
except CdcError as exc:
    print(exc.kind.value, exc)
"""


def test_a_data_path_open_in_another_process_is_refused_naming_it(tmp_path: Path) -> None:
    """What `cdc verify` says when the daemon holds the embedded engine's data path."""
    url = f"chdb://{tmp_path / 'ch'}"
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, url], stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
            second = subprocess.run(
                [sys.executable, "-c", OPEN, url], capture_output=True, text=True, timeout=120
            )
        finally:
            holder.kill()
    assert second.stdout.startswith("sink_connection "), (second.stdout, second.stderr)
    assert f"open in another process (pid {holder.pid})" in second.stdout
    assert "cdc status" in second.stdout
    assert "DB::Exception" not in second.stderr, "refused before the engine opens the path"

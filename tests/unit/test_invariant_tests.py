"""Every invariant of the design names, in `docs/architecture.md`, a test that exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| (\d) \| [^|]+ \| `(tests/[\w/]+\.py)::(test_\w+)` \|$", re.M)


def test_each_invariant_names_a_test_that_exists() -> None:
    rows = ROW.findall((ROOT / "docs" / "architecture.md").read_text())
    assert [int(number) for number, _, _ in rows] == list(range(1, 10))
    for number, path, name in rows:
        tree = ast.parse((ROOT / path).read_text())
        tests = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert name in tests, f"invariant {number}: {path} has no {name}"

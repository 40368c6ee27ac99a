"""CPU time of processes and threads, read from /proc, for the streaming benchmark.

A snapshot maps a name (a thread of the daemon, a Postgres process by its role) to the
CPU ticks (user + system) it used so far; two snapshots' difference is what each used in
between. Postgres processes are the postmaster's children, named by the title Postgres
gives them (`postgres: walsender ...`, `postgres: checkpointer`, a client backend's
`postgres: <user> <database> <client> <activity>`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
# Fields of /proc/<pid>/stat after the command name, counted from 0 at the state field.
UTIME_FIELD = 11
STIME_FIELD = 12
BACKGROUND = ("checkpointer", "walwriter", "archiver", "startup")


@dataclass(frozen=True)
class Stat:
    comm: str
    ticks: int  # user + system


def parse_stat(text: str) -> Stat:
    """The command name and CPU ticks of one /proc/<pid>/stat (or task stat) line. The name
    is in parentheses and may hold spaces and parentheses itself: it ends at the last ')'."""
    open_at, close_at = text.find("("), text.rfind(")")
    if open_at < 0 or close_at < open_at:
        raise ValueError(f"not a /proc stat line: {text[:80]!r}")
    fields = text[close_at + 2 :].split()
    if len(fields) <= STIME_FIELD:
        raise ValueError(f"short /proc stat line: {text[:80]!r}")
    return Stat(text[open_at + 1 : close_at], int(fields[UTIME_FIELD]) + int(fields[STIME_FIELD]))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None  # ended since it was listed


def threads(pid: int) -> dict[int, Stat]:
    """Every thread of `pid`: its id, name and ticks."""
    found: dict[int, Stat] = {}
    try:
        tids = [int(entry.name) for entry in (PROC / str(pid) / "task").iterdir()]
    except FileNotFoundError:
        return found
    for tid in tids:
        text = _read(PROC / str(pid) / "task" / str(tid) / "stat")
        if text is not None:
            found[tid] = parse_stat(text)
    return found


def postgres_role(title: str) -> str:
    """What a Postgres process does, from its title: 'walsender', 'backend' (a client
    connection) or the background process' own name ('checkpointer', 'walwriter', ...)."""
    words = title.removeprefix("postgres:").split()
    if not words:
        return "postmaster"
    if words[0] == "walsender":
        return "walsender"
    if words[0] in ("autovacuum", "logical", "background", "parallel"):
        return " ".join(words[:2])
    if words[0] in BACKGROUND:
        return words[0]
    return "backend"


def postgres_processes(postmaster: int) -> dict[int, tuple[str, int]]:
    """The postmaster's children: pid -> (role, ticks)."""
    children = _read(PROC / str(postmaster) / "task" / str(postmaster) / "children") or ""
    found: dict[int, tuple[str, int]] = {}
    for pid in map(int, children.split()):
        text = _read(PROC / str(pid) / "stat")
        cmdline = _read(PROC / str(pid) / "cmdline")
        if text is None or cmdline is None:
            continue
        found[pid] = (postgres_role(cmdline.replace("\0", " ").strip()), parse_stat(text).ticks)
    return found


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split()[0])


def used_seconds(before: Mapping[int, int], after: Mapping[int, int]) -> dict[int, float]:
    """Seconds of CPU each id used between two readings of ticks (0 before if it was not
    there yet)."""
    return {key: (ticks - before.get(key, 0)) / TICKS_PER_S for key, ticks in after.items()}

"""Named fault points, for tests that prove nothing is lost when the daemon breaks.

Disabled unless `configure` is given a spec (the CLI reads it from `CDC_FAULTS`, which
only tests set): `name=action[@hit][*times]`, comma-separated. `action` is `kill`
(SIGKILL this process) or `raise` (a retryable sink error); `@hit` fires from the n-th
time the point is reached (default 1), `*times` stops after that many firings
(default: forever for `raise`, once for `kill`).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from cdc.errors import CdcError, ErrorKind

POINTS = (
    "before_historic",
    "after_historic",
    "before_clickhouse",
    "after_clickhouse",
    "before_ack",
    "after_ack",
    "mid_backfill_chunk",
    "mid_backfill_plan",
    "after_slot_created",
    "before_table_load",
)


@dataclass
class Fault:
    action: str
    from_hit: int = 1
    times: int | None = None
    hits: int = 0
    fired: int = 0


_faults: dict[str, Fault] = {}


def parse(spec: str) -> dict[str, Fault]:
    faults: dict[str, Fault] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, rule = item.partition("=")
        if name not in POINTS:
            raise CdcError(ErrorKind.CONFIG, f"unknown fault point {name!r} (known: {POINTS})")
        rule, _, times = rule.partition("*")
        action, _, hit = rule.partition("@")
        if action not in ("kill", "raise"):
            raise CdcError(ErrorKind.CONFIG, f"fault action must be kill or raise, not {action!r}")
        faults[name] = Fault(action, int(hit or 1), int(times) if times else None)
    return faults


def configure(spec: str | None) -> None:
    _faults.clear()
    if spec:
        _faults.update(parse(spec))


def point(name: str) -> None:
    """Reached a fault point: fire its fault if one is configured and due."""
    fault = _faults.get(name)
    if fault is None:
        return
    fault.hits += 1
    if fault.hits < fault.from_hit:
        return
    limit = fault.times if fault.times is not None else (1 if fault.action == "kill" else None)
    if limit is not None and fault.fired >= limit:
        return
    fault.fired += 1
    if fault.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise CdcError(ErrorKind.SINK_CONNECTION, f"injected fault at {name}")

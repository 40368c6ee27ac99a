"""The daemon's Prometheus metrics and its small HTTP endpoint (/metrics, /healthz, /readyz).

Metrics live in a registry of their own per daemon (so tests and several pipelines in one
process do not collide). `/healthz` answers 200 while the main loop keeps turning;
`/readyz` answers 200 while the daemon streams, its last apply succeeded and the apply lag
is under the threshold. The endpoint is off unless a port is configured.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.changes = Counter(
            "cdc_changes_applied", "Row changes applied to every sink", ["table", "op"], registry=r
        )
        self.batches = Counter("cdc_batches_applied", "Batches applied to every sink", registry=r)
        self.batch_seconds = Histogram(
            "cdc_batch_apply_seconds", "Time to apply one batch to every sink", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.lag_bytes = Gauge(
            "cdc_apply_lag_bytes",
            "Server WAL end minus the flush LSN (0 when idle and flushed)",
            registry=r,
        )
        self.lag_seconds = Gauge(
            "cdc_apply_lag_seconds", "Now minus the commit time of the last applied change",
            registry=r,
        )  # fmt: skip
        self.retained_wal = Gauge(
            "cdc_slot_retained_wal_bytes", "WAL the slot keeps on the source", registry=r
        )
        self.errors = Counter("cdc_errors", "Errors by kind", ["kind"], registry=r)
        self.backfill_rows = Counter("cdc_backfill_rows", "Rows copied by backfills", registry=r)
        self.backfill_chunks_left = Gauge(
            "cdc_backfill_chunks_pending", "Chunks of the running backfill not done yet",
            registry=r,
        )  # fmt: skip

        self.drift_rows = Gauge(
            "cdc_drift_rows",
            "Rows that differ from the source (missing, extra, changed) at the monitor's last "
            "completed check of the table",
            ["table", "target"], registry=r,
        )  # fmt: skip
        self.monitor_last_pass = Gauge(
            "cdc_monitor_last_pass_timestamp_seconds",
            "When the monitor last finished checking the table (Unix time)", ["table"],
            registry=r,
        )  # fmt: skip
        self.monitor_interval = Gauge(
            "cdc_monitor_interval_seconds", "The monitor's pass interval (0: off)", registry=r
        )
        self.monitor_rows_checked = Counter(
            "cdc_monitor_rows_checked", "Source rows the monitor has compared", registry=r
        )
        self.freshness = Gauge(
            "cdc_freshness_seconds",
            "Now minus the commit time of the newest source transaction both targets hold",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HealthState:
    """What the probes look at; updated by the daemon."""

    def __init__(self, max_lag_s: float, stuck_after_s: float = 60.0) -> None:
        self.max_lag_s = max_lag_s
        self.stuck_after_s = stuck_after_s
        self.loop_at = time.monotonic()
        self.streaming = False
        self.last_apply_ok = True
        self.lag_s = 0.0

    def tick(self) -> None:
        self.loop_at = time.monotonic()

    def healthy(self) -> tuple[bool, str]:
        idle = time.monotonic() - self.loop_at
        if idle > self.stuck_after_s:
            return False, f"main loop has not turned for {idle:.0f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if not self.streaming:
            return False, "not streaming yet"
        if not self.last_apply_ok:
            return False, "the last apply failed; retrying"
        if self.lag_s > self.max_lag_s:
            return False, f"apply lag {self.lag_s:.0f} s is over {self.max_lag_s:.0f} s"
        return True, "ok"


def serve(port: int, metrics: Metrics, health: HealthState, host: str = "0.0.0.0") -> Any:
    """Start the endpoint on a daemon thread; returns the server (call `shutdown()`)."""
    routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, metrics.render()),
        "/healthz": lambda: _probe(health.healthy()),
        "/readyz": lambda: _probe(health.ready()),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?")[0])
            status, content_type, body = route() if route else (404, "text/plain", b"not found\n")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            """Probes are frequent; keep them out of the logs."""

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="cdc-http", daemon=True).start()
    return server


def _probe(result: tuple[bool, str]) -> tuple[int, str, bytes]:
    ok, message = result
    return (200 if ok else 503), "text/plain", (message + "\n").encode()

"""How every component retries: what a retry can outlast, and how long to wait between tries.

A failure is worth a retry only if `cdc.classify` made it a `CdcError` whose policy is to
retry (a lost connection, a server busy or restarting, a deadlock); anything else leaves
at once. Waits grow exponentially from `Backoff.first_s` up to `Backoff.max_s`, with
jitter (so daemons restarted together do not retry in step), and the retries end after
`attempts` tries, after `give_up_after_s` seconds, or when the caller is stopping. One
`retrying` (tenacity) serves the daemon's setup and apply stages, the source's reconnects,
the catalog's queries and the backfill's chunks; each logs its retries under its own
event name.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_any,
)
from tenacity.stop import stop_base

from cdc.errors import Action, CdcError
from cdc.ops.logs import get_logger
from cdc.ops.settings import redact_url

_log = get_logger()


def retryable(exc: BaseException) -> bool:
    """A failure a retry can outlast (`cdc.errors.POLICIES`)."""
    return isinstance(exc, CdcError) and exc.policy.action is Action.RETRY


@dataclass(frozen=True)
class Backoff:
    first_s: float = 0.2  # the first wait; each next one doubles, plus up to this again
    max_s: float = 30.0
    attempts: int | None = None  # tries in all; None: no limit
    give_up_after_s: float | None = None  # since the first failure; None: no limit

    def delay(self, retry: int) -> float:
        """The wait before the `retry`-th retry (1 for the first), without the jitter."""
        return float(min(self.max_s, self.first_s * 2 ** (retry - 1)))

    def wait(self, state: RetryCallState) -> float:
        """The wait after the attempt `state` ended, with the jitter (tenacity's `wait`)."""
        jitter = random.uniform(0, self.first_s)
        return min(self.max_s, self.delay(state.attempt_number) + jitter)


class _StopWhen(stop_base):
    def __init__(self, stopping: Callable[[], bool]) -> None:
        self._stopping = stopping

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._stopping()


def retrying(
    event: str,
    backoff: Backoff,
    *,
    retry_if: Callable[[BaseException], bool] = retryable,
    stopping: Callable[[], bool] = lambda: False,
    on_retry: Callable[[BaseException, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    **context: Any,
) -> Retrying:
    """Attempts (`for attempt in retrying(...): with attempt: ...`) that retry the
    failures `retry_if` accepts, as `backoff` says. Before each wait the retry is logged
    as `event` (with `context`), and `on_retry(error, delay)` is called. When the retries
    end, the last failure is raised as it was."""
    stops: list[stop_base] = [_StopWhen(stopping)]
    if backoff.attempts is not None:
        stops.append(stop_after_attempt(backoff.attempts))
    if backoff.give_up_after_s is not None:
        stops.append(stop_after_delay(backoff.give_up_after_s))

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        assert exc is not None
        _log.warning(
            event,
            **context,
            kind=exc.kind.value if isinstance(exc, CdcError) else type(exc).__name__,
            error=redact_url(str(exc).strip()),
            attempt=state.attempt_number,
            retry_in_s=round(delay, 2),
        )
        if on_retry is not None:
            on_retry(exc, delay)

    return Retrying(
        retry=retry_if_exception(retry_if),
        stop=stop_any(*stops),
        wait=backoff.wait,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )

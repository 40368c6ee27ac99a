"""`cdc.retry`: what is retried, how long it waits, and when it gives up."""

from __future__ import annotations

import pytest

from cdc.errors import CdcError, ErrorKind
from cdc.retry import Backoff, retryable, retrying

pytestmark = pytest.mark.unit

LOST = CdcError(ErrorKind.SINK_CONNECTION, "connection lost")


def run(
    backoff: Backoff, failures: list[BaseException], **kwargs: object
) -> tuple[int, list[float]]:
    """Attempts until one succeeds (each failing with the next of `failures`); returns
    the number of attempts and the waits."""
    waits: list[float] = []
    tries = 0
    for attempt in retrying("test_retry", backoff, sleep=waits.append, **kwargs):  # type: ignore[arg-type]
        with attempt:
            tries += 1
            if failures:
                raise failures.pop(0)
    return tries, waits


def test_a_transient_failure_is_retried_with_growing_capped_waits() -> None:
    retried: list[float] = []
    tries, waits = run(
        Backoff(first_s=0.1, max_s=0.5),
        [LOST] * 5,
        on_retry=lambda _exc, delay: retried.append(delay),
    )
    assert tries == 6
    assert retried == waits
    assert 0.1 <= waits[0] <= 0.2 and 0.2 <= waits[1] <= 0.3 and 0.4 <= waits[2] <= 0.5
    assert waits[3:] == [0.5, 0.5]  # capped


@pytest.mark.parametrize(
    "failure",
    [CdcError(ErrorKind.REJECTED, "type mismatch"), CdcError(ErrorKind.CONFIG, "bad"),
     ValueError("a bug")],
)  # fmt: skip
def test_what_a_retry_cannot_outlast_leaves_at_once(failure: BaseException) -> None:
    assert not retryable(failure)
    with pytest.raises(type(failure)):
        run(Backoff(), [failure])


def test_retries_end_after_the_attempts_or_when_stopping() -> None:
    with pytest.raises(CdcError) as raised:
        run(Backoff(first_s=0.01, attempts=3), [LOST] * 3)
    assert raised.value is LOST
    with pytest.raises(CdcError):
        run(Backoff(), [LOST], stopping=lambda: True)
    assert run(Backoff(first_s=0.01, attempts=3), [LOST] * 2)[0] == 3


def test_retries_end_after_the_time_given() -> None:
    with pytest.raises(CdcError):
        run(Backoff(first_s=0.001, give_up_after_s=0.0), [LOST] * 100)


def test_the_wait_before_each_retry() -> None:
    backoff = Backoff(first_s=0.2, max_s=1.0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 1.0]

"""The batches completed and not yet written (`cdc.apply.unwritten`): what a completion
sees, and when a completion that must wait for them returns."""

from __future__ import annotations

import threading

import pytest

from cdc.apply.batch import Batch
from cdc.apply.unwritten import Unwritten

pytestmark = pytest.mark.unit


def test_batches_are_listed_oldest_first_until_written() -> None:
    unwritten = Unwritten()
    first, second = Batch(), Batch()
    unwritten.add(first)
    unwritten.add(second)
    assert unwritten.batches() == (first, second)
    unwritten.written(first)
    assert unwritten.batches() == (second,)


def _waiting(unwritten: Unwritten) -> threading.Thread:
    waiter = threading.Thread(target=unwritten.wait_written)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()
    return waiter


def test_a_wait_ends_once_every_batch_is_written() -> None:
    unwritten = Unwritten()
    first, second = Batch(), Batch()
    unwritten.add(first)
    unwritten.add(second)
    waiter = _waiting(unwritten)
    unwritten.written(first)
    waiter.join(0.2)
    assert waiter.is_alive()
    unwritten.written(second)
    waiter.join(5)
    assert not waiter.is_alive()


def test_a_wait_ends_when_the_writing_stage_failed() -> None:
    """Nothing would write the batches it waits for: it returns (the applier writes
    nothing after a failure), instead of holding the pipeline's shutdown."""
    unwritten = Unwritten()
    unwritten.add(Batch())
    waiter = _waiting(unwritten)
    unwritten.failed()
    waiter.join(5)
    assert not waiter.is_alive()

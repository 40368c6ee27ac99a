"""The apply pipeline (`cdc.apply.applier`): batches pass every stage in order, the applied
position follows the last stage, a failure reaches the submitter, and the pipeline holds no
more batches than its stages and the one submitted (memory stays bounded by the batch
size, whatever the number of stages)."""

from __future__ import annotations

import threading
import time

import pytest

from cdc.apply.applier import Applier
from cdc.apply.batch import Batch
from cdc.apply.stages import Stats
from cdc.protocol.lsn import Lsn

pytestmark = pytest.mark.unit


def _batch(n: int) -> Batch:
    return Batch(end_lsn=Lsn(n))


def test_every_batch_passes_every_stage_in_order() -> None:
    seen: list[tuple[int, int]] = []
    stages = [lambda b, k=k: seen.append((k, int(b.end_lsn))) for k in range(3)]
    applier = Applier(stages)
    try:
        for n in range(1, 21):
            applier.submit(_batch(n))
        applier.drain()
        assert applier.applied == Lsn(20)
    finally:
        applier.close()
    for k in range(3):
        assert [n for stage, n in seen if stage == k] == list(range(1, 21))


def test_a_failed_stage_reaches_the_submitter() -> None:
    def fail(batch: Batch) -> None:
        raise RuntimeError(f"stage failed at {int(batch.end_lsn)}")

    applier = Applier([lambda b: None, fail, lambda b: None])
    try:
        applier.submit(_batch(1))
        with pytest.raises(RuntimeError, match="stage failed at 1"):
            applier.drain()
        assert applier.applied == Lsn.ZERO
    finally:
        applier.close()


def test_the_pipeline_holds_one_batch_per_stage_and_the_one_submitted() -> None:
    """The last stage waits: each stage before it holds the batch it cannot hand on, one
    more waits to be taken by the first, and the submitter is held (a batch waiting
    between every two stages would let two more in)."""
    release = threading.Event()

    def last(batch: Batch) -> None:
        release.wait()

    applier = Applier([lambda b: None, lambda b: None, last])
    accepted: list[int] = []

    def submit_all() -> None:
        for n in range(1, 11):
            applier.submit(_batch(n))
            accepted.append(n)

    submitter = threading.Thread(target=submit_all, daemon=True)
    submitter.start()
    try:
        time.sleep(0.5)  # the last stage holds batch 1, the others 2 and 3; 4 waits
        assert accepted == [1, 2, 3, 4]
    finally:
        release.set()
        submitter.join(10)
        applier.drain()
        applier.close()
    assert applier.applied == Lsn(10)


def test_the_position_applied_is_none_until_a_batch_is_applied() -> None:
    """The progress line said `applied_lsn: 0/0` after a start with nothing to apply."""
    stats = Stats()
    assert stats.applied is None
    stats.applied_lsn = Lsn.parse("16/B374D848")
    assert stats.applied == "16/B374D848"

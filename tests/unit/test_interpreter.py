"""The pipeline's interpreter settings apply while it runs and are restored after."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from cdc.apply import interpreter

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def defaults() -> Iterator[None]:
    before = (sys.getswitchinterval(), gc.get_threshold())
    sys.setswitchinterval(0.005)
    gc.set_threshold(700, 10, 10)
    yield
    sys.setswitchinterval(before[0])
    gc.set_threshold(*before[1])


def test_tune_then_restore() -> None:
    previous = interpreter.tune()
    assert sys.getswitchinterval() == pytest.approx(interpreter.SWITCH_INTERVAL_S)
    assert gc.get_threshold() == (interpreter.GC_YOUNG_THRESHOLD, 10, 10)
    previous.restore()
    assert sys.getswitchinterval() == pytest.approx(0.005)
    assert gc.get_threshold() == (700, 10, 10)


def test_settings_already_past_ours_are_kept() -> None:
    sys.setswitchinterval(0.0001)
    gc.set_threshold(100_000, 5, 5)
    interpreter.tune().restore()
    interpreter.tune()
    assert sys.getswitchinterval() == pytest.approx(0.0001, rel=0.05)
    assert gc.get_threshold() == (100_000, 5, 5)


def test_a_disabled_threshold_stays_disabled() -> None:
    gc.set_threshold(0)
    interpreter.tune()
    assert gc.get_threshold()[0] == 0

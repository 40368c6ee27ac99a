"""Unit tests of the `Lsn` value type: parsing, printing, range and ordering."""

from __future__ import annotations

import copy
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.protocol.lsn import Lsn

pytestmark = pytest.mark.unit

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


def test_parse_and_print_as_postgres_does() -> None:
    lsn = Lsn.parse("16/B374D848")
    assert lsn == 0x16_B374_D848
    assert str(lsn) == "16/B374D848"
    assert repr(lsn) == "Lsn('16/B374D848')"
    assert f"{lsn}" == "16/B374D848"
    assert f"{lsn:x}" == "16b374d848"


def test_print_is_upper_case_without_padding() -> None:
    assert str(Lsn.parse("0/0")) == "0/0"
    assert str(Lsn.parse("00000000/0000001a")) == "0/1A"
    assert str(Lsn(1 << 32)) == "1/0"
    assert str(Lsn((1 << 64) - 1)) == "FFFFFFFF/FFFFFFFF"


def test_constants() -> None:
    assert Lsn.ZERO == 0
    assert isinstance(Lsn.ZERO, Lsn)
    assert Lsn.MAX == (1 << 64) - 1
    assert Lsn() == Lsn.ZERO


def test_is_an_int_and_orders_like_one() -> None:
    a, b = Lsn.parse("0/FFFFFFFF"), Lsn.parse("1/0")
    assert isinstance(a, int)
    assert a < b
    assert b - a == 1
    assert max(b, a) is b
    assert sorted([b, a, Lsn.ZERO]) == [Lsn.ZERO, a, b]
    assert hash(a) == hash(0xFFFFFFFF)
    by_position: dict[int, str] = {a: "x"}
    assert by_position[0xFFFFFFFF] == "x"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "/",
        "1/",
        "/1",
        "1",
        "1/2/3",
        "123456789/0",
        "0/123456789",
        "g/0",
        " 1/0",
        "1/0 ",
        "1/0\n",
        "+1/0",
        "-1/0",
        "0x1/0",
        "1_0/0",
        "\u0661/0",
    ],
)
def test_invalid_text_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="invalid LSN"):
        Lsn.parse(text)


def test_parse_rejects_non_str() -> None:
    with pytest.raises(TypeError):
        Lsn.parse(b"0/0")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, 1 << 64])
def test_out_of_range_int_raises(value: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        Lsn(value)


def test_pickle_and_copy_keep_the_type() -> None:
    lsn = Lsn.parse("AB/CD")
    for clone in (pickle.loads(pickle.dumps(lsn)), copy.copy(lsn), copy.deepcopy(lsn)):
        assert clone == lsn
        assert type(clone) is Lsn


@settings(database=None)
@given(U64)
def test_text_round_trip(value: int) -> None:
    lsn = Lsn(value)
    text = str(lsn)
    assert text == f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
    assert Lsn.parse(text) == lsn
    assert Lsn.parse(text.lower()) == lsn
    assert eval(repr(lsn), {"Lsn": Lsn}) == lsn


def test_constructor_accepts_text() -> None:
    assert Lsn("16/B374D848") == Lsn.parse("16/B374D848")
    with pytest.raises(ValueError, match="invalid LSN"):
        Lsn("16")

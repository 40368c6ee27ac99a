"""The `Lsn` value type: a Postgres WAL position, parsed from and printed as `X/X` text."""

from __future__ import annotations

import re
from typing import ClassVar, Final

_LSN_TEXT: Final = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
_MAX: Final = (1 << 64) - 1


class Lsn(int):
    """A WAL location: an unsigned 64-bit integer, written `high/low` in upper-case hex.

    `Lsn(n)` takes an int, `Lsn("16/B374D848")` (as its repr shows) the text form.
    Being an `int`, it orders, hashes and compares like one (so `Lsn(5) == 5`), and
    arithmetic returns a plain `int`: `end - start` is a byte distance, not a position.
    """

    __slots__ = ()

    ZERO: ClassVar[Lsn]
    MAX: ClassVar[Lsn]

    def __new__(cls, value: int | str = 0) -> Lsn:
        if isinstance(value, str):
            return cls.parse(value)
        if not 0 <= value <= _MAX:
            raise ValueError(f"LSN out of range (0 to 2**64-1): {value!r}")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str) -> Lsn:
        """Parse Postgres' text form, e.g. `"16/B374D848"` (either case, 1-8 hex digits each)."""
        if not isinstance(text, str):
            raise TypeError(f"LSN text must be str, not {type(text).__name__}")
        match = _LSN_TEXT.fullmatch(text)
        if match is None:
            raise ValueError(f"invalid LSN {text!r}: expected two hex numbers like '16/B374D848'")
        return super().__new__(cls, (int(match[1], 16) << 32) | int(match[2], 16))

    def __str__(self) -> str:
        return f"{self >> 32:X}/{self & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else int.__format__(self, spec)


Lsn.ZERO = Lsn(0)
Lsn.MAX = Lsn(_MAX)

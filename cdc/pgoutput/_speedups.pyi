from collections.abc import Callable
from typing import Any

def parse_tuple(
    data: bytes, pos: int, unchanged: object, binary: Callable[[bytes], Any], /
) -> tuple[tuple[Any, ...], int] | None: ...

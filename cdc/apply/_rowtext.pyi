from collections.abc import Iterable
from typing import Any

def row_lines(
    rows: Iterable[tuple[Any, Any]], times: dict[int, bytes], shift: int, unchanged: object, /
) -> tuple[list[bytes], list[Any], list[Any]] | None: ...

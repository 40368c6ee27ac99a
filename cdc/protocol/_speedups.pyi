from collections.abc import Callable
from typing import Any

def parse_row(
    insert: type,
    update: type,
    delete: type,
    key: object,
    old: object,
    unchanged: object,
    binary: Callable[[bytes], Any],
    streaming: bool,
    data: bytes,
    /,
) -> Any: ...

from typing import Any

def screen(
    images: list[Any],
    values_at: int,
    indexes: tuple[int, ...],
    kinds: tuple[int, ...],
    required: tuple[int, ...],
    short_decimal: int,
    /,
) -> list[int]: ...

from typing import Any

def fold(
    records: list[Any],
    start: int,
    stop: int,
    routes: list[tuple[dict[Any, Any], tuple[int, ...], int] | None],
    first_ordinal: int,
    commit_high: int,
    counts: list[int],
    insert: type,
    update: type,
    delete: type,
    image: type,
    unchanged: object,
    /,
) -> int: ...

"""What each historic writer writes of a completed table batch (pure).

The rows of a table batch, as the shared row text (`cdc.apply.rowtext`), split three
ways: tombstones whose historic row holds their values already (marked deleted by one
`UPDATE`, `cdc.sinks.historic.sql.tombstones_sql`), rows inserted at the source (COPYed
straight into the table where they are new) and the others (staged and upserted). With
several writers, each kind is dealt out in turn, so every writer gets a share of each
and no key is in two shares (a batch holds one row per key). Made while the batch is
completed, ahead of the writes: the writing stage only sends.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from cdc.apply.rowtext import RowText
from cdc.load.copytext import NULL
from cdc.schema import TableSchema
from cdc.sinks.historic.sql import array_literal


@dataclass
class Share:
    """One writer's rows of one table batch."""

    inserted: list[bytes] = field(default_factory=list)  # lines of rows new at the source
    lowest: int | None = None  # the lowest version among `inserted` (None: none)
    others: list[bytes] = field(default_factory=list)  # lines to stage and upsert
    # The parameters of `tombstones_sql` for the kept tombstones (None: there are none),
    # and their lines, to stage and upsert if their rows are not all there to mark.
    tombstones: list[str] | None = None
    tombstone_lines: list[bytes] = field(default_factory=list)


def shares(layout: TableSchema, text: RowText, kept: Collection[int], count: int) -> list[Share]:
    """`count` shares of `text`'s rows; `kept`: the identities of the images of tombstones
    whose historic row holds their values (`cdc.sinks.historic.fill`)."""
    tombstones: list[tuple[bytes, tuple[object, ...], int]] = []
    inserted: list[tuple[bytes, int]] = []
    others: list[bytes] = []
    for line, image in zip(text.lines, text.images, strict=True):
        if image.deleted and id(image) in kept:
            tombstones.append((line, image.values, image.version))
        elif image.inserted:
            inserted.append((line, image.version))
        else:
            others.append(line)
    made = []
    for k in range(count):
        mine = inserted[k::count]
        share = Share(
            inserted=[line for line, _ in mine],
            lowest=min((version for _, version in mine), default=None),
            others=others[k::count],
        )
        if marked := tombstones[k::count]:
            share.tombstones = _tombstone_parameters(layout, marked)
            share.tombstone_lines = [line for line, _, _ in marked]
        made.append(share)
    return made


def _tombstone_parameters(
    layout: TableSchema, marked: list[tuple[bytes, tuple[object, ...], int]]
) -> list[str]:
    """One text array per key column, then the versions, then the commit times (a line's
    last field)."""
    times = [line[line.rindex(b"\t") + 1 : -1] for line, _, _ in marked]
    return [
        *(array_literal([values[p] for _, values, _ in marked]) for p in layout.key_indexes),  # type: ignore[misc]
        array_literal([b"%d" % version for _, _, version in marked]),
        array_literal([None if t == NULL else t for t in times]),
    ]

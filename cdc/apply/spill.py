"""A transaction's buffered changes: in memory up to a budget, then in a temp file.

Records are appended in arrival order; past the budget they are pickled in chunks to an
anonymous temp file (deleted when closed), so a 10-million-row transaction costs disk,
not memory. Records of aborted subtransactions are filtered out when read back.
"""

from __future__ import annotations

import itertools
import pickle
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

CHUNK_RECORDS = 2_000
CHUNK_HEADER = struct.Struct(">I")

# A record: (subxid, relation index, message). Relations are held in memory by index so
# they are not pickled once per row.
Record = tuple[int | None, int, Any]


class SpillBuffer:
    """Append-only record buffer with a memory estimate and a spill-to-disk switch."""

    def __init__(self, spill_dir: Path | None = None) -> None:
        self._spill_dir = spill_dir
        self._memory: list[Record] = []
        self._pending: list[Record] = []
        self._file: IO[bytes] | None = None
        self.memory_bytes = 0
        self.count = 0
        self.aborted_subxids: set[int] = set()
        self.relations: list[Any] = []
        self._relation_index: dict[int, int] = {}
        self._last_relation: Any = None
        self._last_index = 0

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def relation_index(self, relation: Any) -> int:
        if relation is self._last_relation:
            return self._last_index
        key = id(relation)
        index = self._relation_index.get(key)
        if index is None:
            index = len(self.relations)
            self.relations.append(relation)
            self._relation_index[key] = index
        self._last_relation, self._last_index = relation, index
        return index

    def append(self, subxid: int | None, relation: Any, message: Any, size: int) -> bool:
        """Add a record; True if it is held in memory (counted in `memory_bytes`)."""
        record = (subxid, self.relation_index(relation), message)
        self.count += 1
        if self._file is None:
            self._memory.append(record)
            self.memory_bytes += size
            return True
        self._pending.append(record)
        if len(self._pending) >= CHUNK_RECORDS:
            self._write_chunk(self._pending)
            self._pending = []
        return False

    def spill(self) -> None:
        """Move what is in memory to disk; later appends go to disk too."""
        if self._file is None:
            # Closed in close(); the file lives as long as the transaction is buffered.
            self._file = tempfile.TemporaryFile(dir=self._spill_dir, prefix="cdc-spill-")  # noqa: SIM115
        for start in range(0, len(self._memory), CHUNK_RECORDS):
            self._write_chunk(self._memory[start : start + CHUNK_RECORDS])
        self._memory = []
        self.memory_bytes = 0

    def _write_chunk(self, records: list[Record]) -> None:
        assert self._file is not None
        blob = pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)
        self._file.write(CHUNK_HEADER.pack(len(blob)))
        self._file.write(blob)

    def _read_chunks(self) -> Iterator[list[Record]]:
        if self._file is None:
            return
        if self._pending:
            self._write_chunk(self._pending)
            self._pending = []
        self._file.flush()
        self._file.seek(0)
        while header := self._file.read(CHUNK_HEADER.size):
            (length,) = CHUNK_HEADER.unpack(header)
            yield pickle.loads(self._file.read(length))

    def chunks(self) -> Iterator[list[Record]]:
        """The records in arrival order, a list at a time (from disk, then memory), without
        those of aborted subtransactions. `relations[record[1]]` is a record's relation."""
        aborted = self.aborted_subxids
        for chunk in itertools.chain(self._read_chunks(), (self._memory,)):
            yield [r for r in chunk if r[0] not in aborted] if aborted else chunk

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._memory = []
        self._pending = []

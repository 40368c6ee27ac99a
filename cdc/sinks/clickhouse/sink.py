"""The ClickHouse sink: one TabSeparated insert per table and batch into versioned tables.

Tables are `ReplacingMergeTree(_version, _is_deleted)` (Replicated on a cluster), so a
replayed or reordered insert never wins over a newer version; reads go through the
`<table>_current` view (FINAL, no tombstones, newer than the truncate watermark). A
TRUNCATE raises the table's watermark and deletes rows below it (a version-guarded
delete: replaying it removes nothing newer). Values are the text Postgres sent, encoded
by `cdc.sinks.clickhouse.values` and parsed by ClickHouse itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from cdc.apply import rowtext
from cdc.apply.batch import Batch, RowImage, TableBatch, TableName
from cdc.apply.unwritten import Unwritten
from cdc.classify import clickhouse_error
from cdc.errors import CdcError
from cdc.load.copytext import NULL
from cdc.ops.logs import get_logger
from cdc.schema import (
    TRUNCATIONS_TABLE,
    VERSION_COLUMN,
    TableSchema,
)
from cdc.sinks.base import CopiedRows, CopyFormat
from cdc.sinks.clickhouse import client as clickhouse
from cdc.sinks.clickhouse import ddl, rowbinary
from cdc.sinks.clickhouse.client import quote_identifier
from cdc.sinks.clickhouse.targets import ClickHouseTargets
from cdc.sinks.clickhouse.values import INSERT_SETTINGS, RowEncoder
from cdc.versions import SHIFT

MUTATION_SETTINGS = {"mutations_sync": 2}
# On a cluster an insert into a Distributed table returns only once every shard has it.
SYNC_INSERT = {"distributed_foreground_insert": 1}
_log = get_logger()


class ClickHouseSink:
    """Applies batches to `<database>.<table>` in ClickHouse. See `cdc.sinks.base.Sink`."""

    name = "clickhouse"

    def __init__(
        self, url: str, database: str, cluster: str | None = None, client: Any = None
    ) -> None:
        self.url = url
        self.database = database
        self.cluster = cluster
        self._client = client
        self._owns_client = client is None
        self._targets = ClickHouseTargets(lambda: self.client, database, cluster)
        self._encoders: dict[TableName, RowEncoder] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = clickhouse.connect(self.url)
        return self._client

    def close(self) -> None:
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None

    def prepare(self, tables: Sequence[TableSchema]) -> None:
        self._targets.ensure_database()
        for table in tables:
            self._targets.ensure(table)

    @contextmanager
    def _writing(self, table: TableName) -> Iterator[None]:
        """Errors as `CdcError`, naming the table (for a quarantine): the client's are
        classified by `cdc.classify`; anything else is a bug and leaves as it is."""
        try:
            yield
        except CdcError as exc:
            exc.table = exc.table or table
            raise
        except Exception as exc:
            error = clickhouse_error(exc, self.url, f"ClickHouse write to {table[1]} failed")
            if error is None:
                raise
            error.table = table
            raise error from exc

    @property
    def _insert_settings(self) -> dict[str, Any]:
        return INSERT_SETTINGS if self.cluster is None else {**INSERT_SETTINGS, **SYNC_INSERT}

    def complete(self, batch: Batch, unwritten: Unwritten | None = None) -> None:
        """ClickHouse keeps no copy to complete a batch from (`cdc.sinks.base.Sink`)."""

    def apply(self, batch: Batch) -> None:
        for name, table in batch.tables.items():
            with self._writing(name):
                self._targets.ensure(table.schema)
                self._apply_table(table)

    def copy_format(self, layout: TableSchema) -> CopyFormat:
        """Binary if every column converts to RowBinary as the table's type
        (`cdc.sinks.clickhouse.rowbinary`)."""
        name = (layout.schema, layout.name)
        with self._writing(name):
            columns = self._targets.ensure(layout)
        binary = rowbinary.plan(layout, columns) is not None
        return CopyFormat.BINARY if binary else CopyFormat.TEXT

    def apply_copy(
        self, layout: TableSchema, copies: Sequence[CopiedRows], version: int
    ) -> list[int]:
        """Live rows as COPY text, which ClickHouse's TabSeparated reads as is (same escapes,
        same `\\N`) for the types `cdc.load.chunks.direct_copy_ok` allows; or as binary COPY,
        converted to RowBinary. One insert per format; `_is_deleted` takes its default, 0.
        Refused: binary rows with a value the target cannot hold, or all binary rows when
        a column has another type than its Postgres type maps to."""
        name = (layout.schema, layout.name)
        refused: list[int] = []
        blocks: dict[str, list[bytes]] = {"TabSeparated": [], "RowBinary": []}
        with self._writing(name):
            plan = rowbinary.plan(layout, self._targets.ensure(layout))
            for position, copied in enumerate(copies):
                if copied.format is CopyFormat.TEXT:
                    blocks["TabSeparated"].append(copied.data)
                elif (block := self._converted(layout, plan, copied, version)) is not None:
                    blocks["RowBinary"].append(block)
                else:
                    refused.append(position)
            for fmt, parts in blocks.items():
                if parts:
                    self.client.raw_insert(
                        self._written(layout.name),
                        column_names=[*layout.column_names, VERSION_COLUMN],
                        insert_block=b"".join(parts),
                        fmt=fmt,
                        settings=self._insert_settings,
                    )
        return refused

    @staticmethod
    def _converted(
        layout: TableSchema, plan: bytes | None, copied: CopiedRows, version: int
    ) -> bytes | None:
        """Binary COPY rows as RowBinary; None if a column or a value cannot be converted."""
        if plan is None:
            return None
        try:
            return rowbinary.convert(copied.data, plan, version)[0]
        except rowbinary.Refused as exc:
            _log.info(
                "copy_refused",
                table=layout.name,
                column=layout.columns[exc.column].name,
                reason=exc.reason,
            )
            return None

    # -- writes ----------------------------------------------------------------------------

    def _encoder(self, layout: TableSchema) -> RowEncoder:
        """The table's encoder, made again when its layout changes."""
        name = (layout.schema, layout.name)
        encoder = self._encoders.get(name)
        if encoder is None or encoder.table is not layout:
            encoder = RowEncoder(layout)
            self._encoders[name] = encoder
        return encoder

    def _written(self, table_name: str) -> str:
        """The table inserts go to: the local table, or on a cluster the Distributed one."""
        name = table_name if self.cluster is None else ddl.distributed_name(table_name)
        return f"{quote_identifier(self.database)}.{quote_identifier(name)}"

    def _apply_table(self, table: TableBatch) -> None:
        layout = table.schema
        text = rowtext.shared_row_text(table) if table.rows else None
        if text is not None and text.incomplete:
            raise ValueError(f"{layout.qualified_name}: a batch is completed before it is applied")
        client = self.client
        local = f"{quote_identifier(self.database)}.{quote_identifier(layout.name)}"
        on_cluster = "" if self.cluster is None else f" ON CLUSTER {quote_identifier(self.cluster)}"
        settings = self._insert_settings
        if table.truncate_version is not None:
            client.command(
                f"INSERT INTO {self._written(TRUNCATIONS_TABLE)}"
                " (table_name, version) VALUES ({name:String}, {version:UInt128})",
                parameters={"name": layout.name, "version": table.truncate_version},
                settings=settings,
            )
            client.command(
                f"ALTER TABLE {local}{on_cluster} DELETE WHERE {quote_identifier(VERSION_COLUMN)} "
                "< {version:UInt128}",
                parameters={"version": table.truncate_version},
                settings=MUTATION_SETTINGS,
            )
        if text is None:
            return
        encoder = self._encoder(layout)
        if encoder.reads_row_text:
            lines = text.lines
            redo = encoder.needs_encoding(text.images)
            to_encode = [text.images[i] for i in sorted(redo)]
            if redo:
                lines = [line for i, line in enumerate(lines) if i not in redo]
        else:
            lines, to_encode = [], text.images
        times = table.commit_times
        encoded = [
            self._encode_row(encoder, layout, image, times.get(image.version >> SHIFT, NULL))
            for image in to_encode
        ]
        client.raw_insert(
            self._written(layout.name),  # quoted: the client puts the name into the query as is
            column_names=list(encoder.insert_columns),
            insert_block=b"".join([*lines, *encoded] if encoded else lines),
            fmt="TabSeparated",
            settings=settings,
        )

    @staticmethod
    def _encode_row(
        encoder: RowEncoder, layout: TableSchema, image: RowImage, commit_time: bytes
    ) -> bytes:
        """One row encoded value by value; a value ClickHouse cannot store is an error
        naming the table, the key and the value."""
        values = image.values
        try:
            return encoder.encode_versioned(values, image.version, image.deleted, commit_time)  # type: ignore[arg-type]
        except CdcError as exc:
            shown_key = ", ".join(
                "NULL" if values[i] is None else bytes(values[i]).decode(errors="replace")  # type: ignore[arg-type]
                for i in layout.key_indexes
            )
            raise CdcError(
                exc.kind,
                f"table {layout.qualified_name}, key ({shown_key}): {exc}",
                table=(layout.schema, layout.name),
            ) from exc

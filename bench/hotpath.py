"""Where the daemon's Python time goes, per change, stage by stage, without any I/O.

Records the pgoutput messages of the streaming workload (`bench/streaming.py`) once, then
replays them through each stage of the hot path in this process: decode + assemble,
fold into batches, the shared row text (`cdc.apply.rowtext`), ClickHouse's value checks. Each
stage is timed over several rounds (best round kept) and reported in µs per change.
Usage: python bench/hotpath.py [--workload friendly|realistic] [changes]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import streaming, workloads
from bench.workloads import Workload
from cdc.apply import rowtext
from cdc.apply.assembler import Assembler
from cdc.apply.batch import Batch
from cdc.apply.batcher import BatchBuilder
from cdc.apply.changes import Transaction
from cdc.describe import describe_table
from cdc.protocol import Decoder
from cdc.schema import TableSchema
from cdc.sinks.clickhouse.values import RowEncoder
from cdc.stream.replication import ReplicationStream

BATCH_SIZE = 20_000
ROUNDS = 5


def record(changes: int, workload: Workload) -> tuple[int, list[bytes], TableSchema]:
    """(protocol version, the messages, the table) of `changes` changes of the workload."""
    with streaming.loaded_slot(changes, workload) as loaded:
        dsn = loaded.cluster.paths.dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            table = describe_table(conn, "director", "events")
        stream = ReplicationStream(dsn, "base", "bench")
        stream.open()
        messages: list[bytes] = []
        counted = 0
        while counted < changes and (payload := stream.read(5.0)) is not None:
            messages.append(payload)
            counted += payload[:1] in (b"I", b"U", b"D")
        while messages[-1][:1] != b"C" and (payload := stream.read(5.0)) is not None:
            messages.append(payload)  # up to the last transaction's Commit
        stream.close()
        return stream.proto_version, messages, table


def one_round(proto: int, messages: list[bytes], table: TableSchema) -> dict[str, float]:
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    decoder, assembler = Decoder(proto), Assembler()
    transactions = []
    for payload in messages:
        event = assembler.feed(decoder.decode(payload), len(payload))
        if isinstance(event, Transaction):
            transactions.append(event)
    seconds["decode and assemble"] = time.perf_counter() - start
    start = time.perf_counter()
    builder = BatchBuilder(lambda relation: table, max_changes=BATCH_SIZE)
    batches: list[Batch] = []
    for txn in transactions:
        batches.extend(builder.add(txn))
        if builder.changes >= BATCH_SIZE:
            batches.append(builder.build())
    batches.append(builder.build())
    seconds["fold into batches"] = time.perf_counter() - start
    tables = [t for batch in batches for t in batch.tables.values()]
    start = time.perf_counter()
    texts = [rowtext.shared_row_text(t) for t in tables]
    seconds["row text (both targets)"] = time.perf_counter() - start
    start = time.perf_counter()
    encoder = RowEncoder(table)
    for text in texts:
        encoder.needs_encoding(text.images)
    seconds["ClickHouse value checks"] = time.perf_counter() - start
    return seconds


def measure(changes: int, workload: Workload = workloads.FRIENDLY) -> dict[str, float]:
    """Best-of-`ROUNDS` µs per change of each stage, and their total."""
    proto, messages, table = record(changes, workload)
    counted = sum(1 for m in messages if m[:1] in (b"I", b"U", b"D"))
    best: dict[str, float] = {}
    for _ in range(ROUNDS):
        for stage, spent in one_round(proto, messages, table).items():
            best[stage] = min(best.get(stage, float("inf")), spent)
    per_change = {stage: round(s * 1e6 / counted, 2) for stage, s in best.items()}
    per_change["total"] = round(sum(per_change.values()), 2)
    return per_change


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("changes", type=int, nargs="?", default=200_000)
    parser.add_argument("--workload", choices=sorted(workloads.WORKLOADS), default="friendly")
    args = parser.parse_args()
    print(json.dumps(measure(args.changes, workloads.WORKLOADS[args.workload]), indent=2))


if __name__ == "__main__":
    main()

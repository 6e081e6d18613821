"""How long a partition replica takes, when the broker starts, to load its idempotent
producers' state: by reading every batch header of its log (no snapshot, as before
snapshots existed), from the snapshot of the last segment roll and the headers of the
active segment (a restart after a crash), and from the snapshot a clean stop writes at
the log end.

    python bench/producer_state_load.py [--batches 1000000] [--producers 5]
                                        [--segment-bytes 16777216] [--rounds 3]

Builds a log of one-record idempotent batches from a few producers taking turns in a
temporary directory (written with ``PartitionLog.append``, as a leader appends), then
creates the partition's replica (``Partition``, as the broker does on start) each way
and prints the best of ``--rounds`` in seconds, side by side, with the time a snapshot
takes to write. The log's files are in the page cache. The three ways must load the same
producers; the bench checks it first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from brook_broker.config import BrokerConfig
from brook_broker.metadata.model import PartitionState
from brook_broker.replication.partition import Partition
from brook_broker.replication.producer_state import (
    ProducerStateTable,
    delete_snapshots,
    snapshot_offsets,
)
from brook_broker.storage.batch import validate_batches
from brook_broker.storage.log import LogConfig, PartitionLog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.batches import BASE_TIME_MS, make_batch

APPEND_BATCHES = 1000
"""Batches per ``PartitionLog.append``, as one produce request might carry them."""


def build_log(directory: Path, batches: int, producers: int, segment_bytes: int) -> PartitionLog:
    log = PartitionLog.open(directory, "orders", 0, LogConfig(segment_bytes=segment_bytes))
    for first in range(0, batches, APPEND_BATCHES):
        data = b"".join(
            make_batch(
                [b"order %d" % index],
                producer_id=1000 + index % producers,
                producer_epoch=0,
                base_sequence=index // producers,
            )
            for index in range(first, min(first + APPEND_BATCHES, batches))
        )
        log.append(data, validate_batches(data), now_ms=BASE_TIME_MS, leader_epoch=0)
    return log


async def _no_submit(*args: object) -> PartitionState:
    raise AssertionError("no ISR change in this bench")


def open_replica(log: PartitionLog) -> Partition:
    return Partition(
        0,
        "orders",
        0,
        log,
        topic_id=uuid.UUID(int=1),
        config=BrokerConfig(),
        submit=_no_submit,
        notify=lambda topic, index, appended: None,
    )


def best_of(rounds: int, call: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def state(partition: Partition) -> dict[int, tuple[int, list[object]]]:
    return {
        producer_id: (entry.epoch, list(entry.batches))
        for producer_id, entry in partition.producers.producers.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=1_000_000)
    parser.add_argument("--producers", type=int, default=5)
    parser.add_argument("--segment-bytes", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary) / "orders-0"
        start = time.perf_counter()
        log = build_log(directory, args.batches, args.producers, args.segment_bytes)
        segments = len(list(directory.glob("*.log")))
        print(
            f"log: {args.batches} one-record batches from {args.producers} producers, "
            f"{log.size_bytes / 2**20:.0f} MiB in {segments} segments "
            f"(built in {time.perf_counter() - start:.0f} s)"
        )
        active = log.active_segment_base_offset
        scanned = state(open_replica(log))
        full_scan = best_of(args.rounds, lambda: open_replica(log))

        # What the last roll left: the producers as of the active segment's base offset.
        table = ProducerStateTable("orders-0")
        table.load(log.batch_headers(0, active))
        write = best_of(args.rounds, lambda: table.write_snapshot(directory, active, 0))
        after_crash = state(open_replica(log))
        from_roll = best_of(args.rounds, lambda: open_replica(log))

        open_replica(log).stop()  # a clean stop: a snapshot at the log end
        assert snapshot_offsets(directory) == [active, log.log_end_offset]
        after_stop = state(open_replica(log))
        from_stop = best_of(args.rounds, lambda: open_replica(log))
        if not scanned == after_crash == after_stop:
            raise SystemExit("the ways of loading disagree")
        delete_snapshots(directory, lambda offset: True)
        log.close()
    print(f"{'full header scan':>18} {'roll snapshot':>15} {'stop snapshot':>15}  seconds")
    print(f"{full_scan:18.3f} {from_roll:15.3f} {from_stop:15.4f}")
    print(
        f"the roll snapshot left {log.log_end_offset - active} of {log.log_end_offset} "
        f"batches to read; writing a snapshot took {write * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()

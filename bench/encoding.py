"""What encoding a message costs: the old path (the mapping built into kio dataclasses,
then kio's writers) beside the broker's encoder, which writes the mapping directly.

    python bench/encoding.py [--seconds 1]

Prints the microseconds per encode of each, side by side, for the messages of the hot
path: a follower's Fetch v12 (request and response, 20 partitions, most of them empty
as ``__consumer_offsets``' are), a Produce v9 response and a Metadata v12 response. Both
paths must give the same bytes; the bench checks it first.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from brook_broker.protocol import codec
from brook_broker.protocol.client import encode_request
from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.response_header.v0.header import ResponseHeader as ResponseHeaderV0
from kio.schema.response_header.v1.header import ResponseHeader as ResponseHeaderV1
from kio.serial import entity_writer

from tests.support.entities import build

FETCH, PRODUCE, METADATA = 1, 0, 3
PARTITIONS = 20
BATCH = bytes(range(256)) * 4  # a 1 KB record batch, as the log hands it out


def _kio_frame(header: Any, body: Any) -> bytes:
    parts: list[bytes] = []

    class Sink:
        write = parts.append

    entity_writer(type(header))(Sink, header)
    entity_writer(type(body))(Sink, body)
    payload = b"".join(parts)
    return len(payload).to_bytes(4, "big") + payload


@cache
def _response_type(api_key: int, version: int) -> Any:
    return load_response_schema(api_key, version)


@cache
def _request_type(api_key: int, version: int) -> Any:
    return load_request_schema(api_key, version)


def old_response(api_key: int, version: int, body: Mapping[str, Any]) -> bytes:
    response_type = _response_type(api_key, version)
    header_type = ResponseHeaderV1 if response_type.__flexible__ else ResponseHeaderV0
    return _kio_frame(header_type(correlation_id=7), build(response_type, body))


def new_response(api_key: int, version: int, body: Mapping[str, Any]) -> bytes:
    return codec.encode_frame(_response_type(api_key, version), 7, body)


def old_request(api_key: int, version: int, body: Mapping[str, Any]) -> bytes:
    request_type = _request_type(api_key, version)
    header = request_type.__header_schema__(
        request_api_key=api_key, request_api_version=version, correlation_id=7, client_id="b-1"
    )
    return _kio_frame(header, build(request_type, body))


def new_request(api_key: int, version: int, body: Mapping[str, Any]) -> bytes:
    return encode_request(api_key, version, 7, "b-1", body)


def _partitions() -> list[tuple[str, int]]:
    """One partition of ``orders`` and 19 of ``__consumer_offsets``."""
    return [("orders", 0)] + [("__consumer_offsets", index) for index in range(PARTITIONS - 1)]


def fetch_response() -> dict[str, Any]:
    topics: dict[str, list[dict[str, Any]]] = {}
    for topic, index in _partitions():
        topics.setdefault(topic, []).append(
            {
                "partition_index": index,
                "error_code": ErrorCode.none,
                "high_watermark": 1_000_000 + index,
                "last_stable_offset": 1_000_000 + index,
                "log_start_offset": 0,
                "aborted_transactions": None,
                "preferred_read_replica": -1,
                "records": memoryview(BATCH) if topic == "orders" else None,
            }
        )
    return {
        "error_code": ErrorCode.none,
        "session_id": 0,
        "responses": [{"topic": name, "partitions": answers} for name, answers in topics.items()],
    }


def fetch_request() -> dict[str, Any]:
    topics: dict[str, list[dict[str, Any]]] = {}
    for topic, index in _partitions():
        topics.setdefault(topic, []).append(
            {
                "partition": index,
                "current_leader_epoch": 3,
                "fetch_offset": 1_000_000 + index,
                "log_start_offset": 0,
                "partition_max_bytes": 1 << 20,
            }
        )
    return {
        "replica_id": 2,
        "max_wait": 500,
        "min_bytes": 1,
        "max_bytes": 50 << 20,
        "session_epoch": -1,
        "topics": [{"topic": name, "partitions": wanted} for name, wanted in topics.items()],
    }


def produce_response() -> dict[str, Any]:
    return {
        "responses": [
            {
                "name": "orders",
                "partition_responses": [
                    {
                        "index": 0,
                        "error_code": ErrorCode.none,
                        "error_message": None,
                        "base_offset": 1_000_000,
                        "log_append_time": None,
                        "log_start_offset": 0,
                    }
                ],
            }
        ]
    }


def metadata_response() -> dict[str, Any]:
    return {
        "brokers": [
            {"node_id": node, "host": f"brook-{node}.brook", "port": 9092, "rack": None}
            for node in range(3)
        ],
        "cluster_id": "brook",
        "controller_id": 0,
        "topics": [
            {
                "error_code": ErrorCode.none,
                "name": "orders",
                "topic_id": uuid.UUID(int=42),
                "is_internal": False,
                "partitions": [
                    {
                        "error_code": ErrorCode.none,
                        "partition_index": index,
                        "leader_id": index % 3,
                        "leader_epoch": 3,
                        "replica_nodes": [index % 3, (index + 1) % 3, (index + 2) % 3],
                        "isr_nodes": [index % 3, (index + 1) % 3, (index + 2) % 3],
                        "offline_replicas": [],
                    }
                    for index in range(6)
                ],
                "topic_authorized_operations": -(2**31),
            }
        ],
        "cluster_authorized_operations": -(2**31),
    }


Encode = Callable[[int, int, Mapping[str, Any]], bytes]
CASES: list[tuple[str, Encode, Encode, int, int, dict[str, Any]]] = [
    ("Fetch v12 response, 20 partitions", old_response, new_response, FETCH, 12, fetch_response()),
    ("Fetch v12 request, 20 partitions", old_request, new_request, FETCH, 12, fetch_request()),
    ("Produce v9 response", old_response, new_response, PRODUCE, 9, produce_response()),
    ("Metadata v12 response, 6 partitions", old_response, new_response, METADATA, 12,
     metadata_response()),
]  # fmt: skip


def per_call(call: Callable[[], object], seconds: float) -> float:
    """Microseconds per call, the best of five rounds of about ``seconds`` / 5 each."""
    call()
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < 0.05:
        call()
        count += 1
    rounds = max(1, int(count * seconds / 5 / 0.05))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            call()
        best = min(best, (time.perf_counter() - start) / rounds)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per figure")
    seconds = parser.parse_args().seconds
    print(f"{'message':<38} {'old µs':>8} {'new µs':>8} {'speed-up':>9}")
    for name, old, new, api_key, version, body in CASES:
        if old(api_key, version, body) != new(api_key, version, body):
            raise SystemExit(f"{name}: the two paths disagree")
        old_us = per_call(lambda: old(api_key, version, body), seconds)  # noqa: B023
        new_us = per_call(lambda: new(api_key, version, body), seconds)  # noqa: B023
        print(f"{name:<38} {old_us:8.1f} {new_us:8.1f} {old_us / new_us:8.1f}x")


if __name__ == "__main__":
    main()

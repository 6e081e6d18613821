"""KafkaClient without sockets: request frames the listener decodes, responses it encodes,
frames split anywhere, answers matched by correlation id, failures on a lost connection."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from brook_broker.protocol import codec
from brook_broker.protocol.client import (
    KafkaConnectionError,
    KafkaProtocolError,
    _Connection,
    decode_response,
    encode_request,
)
from kio.schema.errors import ErrorCode

FETCH, METADATA, API_VERSIONS, OFFSET_FOR_LEADER_EPOCH, BROKER_HEARTBEAT = 1, 3, 18, 23, 63
SUPPORTED = {FETCH: (4, 12), METADATA: (1, 12), API_VERSIONS: (0, 3), 23: (2, 4), 63: (0, 1)}


def server_side(frame: bytes) -> codec.Request:
    (size,) = struct.unpack_from(">i", frame)
    assert size == len(frame) - 4
    return codec.decode_request(memoryview(frame[4:]), SUPPORTED)


def answer(request: codec.Request, body: dict[str, Any]) -> bytes:
    """The response frame without its size prefix, as the listener would send it."""
    return codec.encode_response(request, body)[4:]


@pytest.mark.parametrize(
    ("api_key", "version"),
    [(FETCH, 4), (FETCH, 12), (METADATA, 1), (METADATA, 12), (API_VERSIONS, 3), (23, 2), (23, 4)],
)
def test_requests_decode_on_the_listener_and_responses_decode_here(
    api_key: int, version: int
) -> None:
    body = {
        "replica_id": 3,
        "max_wait": 500,
        "topics": [],
        "client_software_name": "brook",
        "client_software_version": "1",
    }
    frame = encode_request(api_key, version, 99, "broker-3", body)
    request = server_side(frame)
    assert (request.api_key, request.api_version, request.correlation_id) == (
        api_key,
        version,
        99,
    )
    assert request.client_id == "broker-3"
    response = decode_response(api_key, version, answer(request, {"error_code": 0}))
    assert type(response).__name__.endswith("Response")


def test_a_fetch_round_trip_keeps_the_records() -> None:
    records = bytes(range(256)) * 40
    frame = encode_request(
        FETCH,
        12,
        5,
        "broker-1",
        {
            "replica_id": 1,
            "max_wait": 500,
            "min_bytes": 1,
            "max_bytes": 1 << 20,
            "topics": [
                {
                    "topic": "orders",
                    "partitions": [
                        {"partition": 2, "current_leader_epoch": 4, "fetch_offset": 17},
                    ],
                }
            ],
        },
    )
    request = server_side(frame)
    assert request.body.replica_id == 1
    fetched = request.body.topics[0].partitions[0]
    assert (fetched.partition, fetched.current_leader_epoch, fetched.fetch_offset) == (2, 4, 17)
    body = {
        "responses": [
            {
                "topic": "orders",
                "partitions": [
                    {"partition_index": 2, "high_watermark": 30, "records": records},
                ],
            }
        ]
    }
    response = decode_response(FETCH, 12, answer(request, body))
    partition = response.responses[0].partitions[0]
    assert (partition.high_watermark, partition.records) == (30, records)


def test_a_response_that_does_not_decode_is_a_protocol_error() -> None:
    with pytest.raises(KafkaProtocolError):
        decode_response(METADATA, 12, b"\x00\x00\x00\x01\xff\xff")


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def feed(connection: _Connection, data: bytes, chunk: int) -> None:
    """Deliver ``data`` as the event loop would, at most ``chunk`` bytes per read."""
    while data:
        buffer = connection.get_buffer(-1)
        size = min(len(buffer), chunk, len(data))
        buffer[:size] = data[:size]
        connection.buffer_updated(size)
        data = data[size:]


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
async def test_pipelined_answers_reach_their_requests_in_any_order(chunk: int) -> None:
    connection = _Connection()
    transport = FakeTransport()
    connection.connection_made(transport)
    first = asyncio.ensure_future(connection.send(1, b"request-1"))
    second = asyncio.ensure_future(connection.send(2, b"request-2"))
    await asyncio.sleep(0)
    assert transport.written == [b"request-1", b"request-2"]
    frames = [struct.pack(">ii", 2, 2) + b"two", struct.pack(">ii", 1, 1) + b"one"]
    stray = struct.pack(">ii", 4, 77)  # an answer no one waits for any more
    feed(connection, b"".join(struct.pack(">i", len(f)) + f for f in [*frames, stray]), chunk)
    assert bytes(await first) == frames[1]
    assert bytes(await second) == frames[0]
    assert not connection.lost


async def test_a_lost_connection_fails_every_request_in_flight() -> None:
    connection = _Connection()
    connection.connection_made(FakeTransport())
    pending = [asyncio.ensure_future(connection.send(n, b"x")) for n in range(3)]
    await asyncio.sleep(0)
    connection.connection_lost(ConnectionResetError("reset by peer"))
    for future in pending:
        with pytest.raises(KafkaConnectionError, match="reset by peer"):
            await future
    with pytest.raises(KafkaConnectionError):
        await connection.send(9, b"x")


async def test_a_frame_size_that_cannot_be_kafka_closes_the_connection() -> None:
    connection = _Connection()
    transport = FakeTransport()
    connection.connection_made(transport)
    pending = asyncio.ensure_future(connection.send(1, b"x"))
    await asyncio.sleep(0)
    feed(connection, struct.pack(">i", -5), 4)
    assert transport.closed
    with pytest.raises(KafkaConnectionError, match="not a Kafka frame"):
        await pending


def test_error_codes_come_back_as_kio_error_codes() -> None:
    request = server_side(encode_request(BROKER_HEARTBEAT, 1, 3, "b", {"broker_id": 2}))
    response = decode_response(
        BROKER_HEARTBEAT, 1, answer(request, {"error_code": ErrorCode.not_controller})
    )
    assert response.error_code == ErrorCode.not_controller

"""Framing and ordering of the Kafka listener, driven through asyncio's protocol callbacks."""

from __future__ import annotations

import asyncio
import io
import struct
from collections.abc import Mapping
from typing import Any

from brook_broker.protocol import codec
from brook_broker.protocol.quotas import UNLIMITED, ListenerLimits
from brook_broker.protocol.server import KafkaServer, when_connection_closes
from hypothesis import given, settings
from hypothesis import strategies as st
from kio.schema.produce.v9.request import ProduceRequest
from kio.schema.request_header.v2.header import RequestHeader
from kio.serial import entity_writer
from kio.static.primitive import i16, i32

from tests.support.entities import build


class RecordingDispatcher:
    supported_versions: Mapping[int, tuple[int, int]] = {0: (3, 9), 18: (0, 3)}

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.malformed: list[int | None] = []

    async def handle(self, request: codec.Request) -> Mapping[str, Any] | None:
        records = request.body.topic_data[0].partition_data[0].records
        self.seen.append((request.correlation_id, len(records)))
        if request.body.acks == 0:
            return None
        await asyncio.sleep(0)
        return {"responses": []}

    def api_versions_body(self) -> Mapping[str, Any]:
        return {"api_keys": [{"api_key": 0, "min_version": 3, "max_version": 9}]}

    def malformed_request(self, api_key: int | None) -> None:
        self.malformed.append(api_key)


def limits(**overrides: int) -> ListenerLimits:
    """Listener limits for tests: none but the request size, unless overridden."""
    settings = {
        "socket_request_max_bytes": 10_000_000,
        "socket_request_timeout_ms": UNLIMITED,
        "connections_max_idle_ms": UNLIMITED,
        "queued_max_request_bytes": UNLIMITED,
        "max_connections": UNLIMITED,
        "max_connections_per_ip": UNLIMITED,
    }
    return ListenerLimits(**(settings | overrides))


class FakeTransport(asyncio.Transport):
    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.paused = False
        self.host = host

    def write(self, data: Any) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.host, 1) if name == "peername" else default

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def receive(connection: asyncio.BufferedProtocol, data: bytes) -> int:
    """One read as asyncio's transport does it: take the buffer, fill it, drop it."""
    buffer = connection.get_buffer(-1)
    size = min(len(buffer), len(data))
    buffer[:size] = data[:size]
    del buffer
    connection.buffer_updated(size)
    return size


def produce_frame(correlation_id: int, payload_size: int, acks: int = 1) -> bytes:
    buffer = io.BytesIO()
    header = RequestHeader(
        request_api_key=i16(0),
        request_api_version=i16(9),
        correlation_id=i32(correlation_id),
        client_id="test",
    )
    entity_writer(RequestHeader)(buffer, header)
    body = {
        "acks": acks,
        "timeout": 1000,
        "topic_data": [
            {"name": "t", "partition_data": [{"index": 0, "records": b"r" * payload_size}]}
        ],
    }
    entity_writer(ProduceRequest)(buffer, build(ProduceRequest, body))
    data = buffer.getvalue()
    return struct.pack(">i", len(data)) + data


def correlation_ids(written: bytes) -> list[int]:
    ids, position = [], 0
    while position < len(written):
        size, correlation_id = struct.unpack_from(">ii", written, position)
        ids.append(correlation_id)
        position += 4 + size
    return ids


async def feed(
    stream: bytes, chunk_sizes: list[int], max_request_bytes: int = 10_000_000
) -> tuple[RecordingDispatcher, FakeTransport]:
    dispatcher = RecordingDispatcher()
    server = KafkaServer(dispatcher, limits(socket_request_max_bytes=max_request_bytes))
    connection = server._new_connection()
    transport = FakeTransport()
    connection.connection_made(transport)
    position, chunk = 0, 0
    while position < len(stream) and not transport.closed:
        size = chunk_sizes[chunk % len(chunk_sizes)]
        position += receive(connection, stream[position : position + size])
        chunk += 1
        await asyncio.sleep(0)
    for _ in range(50):
        await asyncio.sleep(0)
    connection.connection_lost(None)
    return dispatcher, transport


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([0, 10, 5_000, 70_000, 300_000]), min_size=1, max_size=6),
    chunk_sizes=st.lists(st.integers(min_value=1, max_value=400_000), min_size=1, max_size=5),
)
def test_frames_arrive_whole_and_in_order_however_the_stream_is_cut(
    sizes: list[int], chunk_sizes: list[int]
) -> None:
    stream = b"".join(produce_frame(index, size) for index, size in enumerate(sizes))
    dispatcher, transport = asyncio.run(feed(stream, chunk_sizes))
    assert dispatcher.seen == list(enumerate(sizes))
    assert correlation_ids(bytes(transport.written)) == list(range(len(sizes)))
    assert not transport.closed


def test_acks_zero_gets_no_response_and_later_requests_still_answer_in_order() -> None:
    stream = produce_frame(1, 10) + produce_frame(2, 10, acks=0) + produce_frame(3, 10)
    dispatcher, transport = asyncio.run(feed(stream, [7]))
    assert [seen[0] for seen in dispatcher.seen] == [1, 2, 3]
    assert correlation_ids(bytes(transport.written)) == [1, 3]


def test_frame_above_the_request_limit_closes_the_connection() -> None:
    dispatcher, transport = asyncio.run(
        feed(produce_frame(1, 5_000), [100_000], max_request_bytes=1_000)
    )
    assert transport.closed
    assert dispatcher.seen == []


def test_negative_length_prefix_closes_the_connection() -> None:
    _dispatcher, transport = asyncio.run(feed(struct.pack(">i", -5) + b"xxxx", [100]))
    assert transport.closed


def test_undecodable_frame_closes_the_connection() -> None:
    garbage = struct.pack(">ihhi", 10, 0, 9, 1) + b"\xff" * 6
    dispatcher, transport = asyncio.run(feed(garbage, [3]))
    assert transport.closed
    assert dispatcher.seen == []
    assert dispatcher.malformed == [0]


def test_unsupported_api_versions_request_is_answered_in_v0_with_error_35() -> None:
    frame = struct.pack(">hhi", 18, 99, 42) + struct.pack(">h", 4) + b"test"
    stream = struct.pack(">i", len(frame)) + frame
    _, transport = asyncio.run(feed(stream, [1000]))
    _size, correlation_id, error_code = struct.unpack_from(">iih", transport.written, 0)
    assert (correlation_id, error_code) == (42, 35)
    assert not transport.closed


class ClosingWatcher(RecordingDispatcher):
    """Registers under one key on every request, as the heartbeat handler does."""

    def __init__(self) -> None:
        super().__init__()
        self.closed: list[int] = []

    async def handle(self, request: codec.Request) -> Mapping[str, Any] | None:
        correlation_id = request.correlation_id
        when_connection_closes("watch", lambda: self.closed.append(correlation_id))
        return await super().handle(request)


def test_a_handler_is_told_once_when_its_connection_closes() -> None:
    async def run() -> ClosingWatcher:
        dispatcher = ClosingWatcher()
        connection = KafkaServer(dispatcher, limits())._new_connection()
        connection.connection_made(FakeTransport())
        receive(connection, produce_frame(1, 10) + produce_frame(2, 10))
        for _ in range(20):
            await asyncio.sleep(0)
        assert dispatcher.closed == []
        connection.connection_lost(None)
        connection.connection_lost(None)
        return dispatcher

    assert asyncio.run(run()).closed == [2]


def test_registering_outside_a_request_does_nothing() -> None:
    when_connection_closes("nobody", lambda: None)

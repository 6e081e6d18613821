"""What a client can make the Kafka listener hold: buffers that follow the bytes that
arrived, the broker-wide request budget, idle and slow-request timeouts, and connection
limits, driven through asyncio's protocol callbacks with a clock of the test's own."""

from __future__ import annotations

import asyncio
import struct
import tracemalloc
from collections.abc import Mapping
from typing import Any

from brook_broker.protocol import codec
from brook_broker.protocol.quotas import MIN_READ, ConnectionQuotas
from brook_broker.protocol.server import KafkaServer, _FrameMaps

from .test_protocol_server import (
    FakeTransport,
    RecordingDispatcher,
    correlation_ids,
    limits,
    produce_frame,
    receive,
)

MB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance_ms(self, milliseconds: float) -> None:
        self.now += milliseconds / 1000


class HeldDispatcher(RecordingDispatcher):
    """Answers the requests with correlation ids in ``held`` only when the test lets them go."""

    def __init__(self, held: set[int]) -> None:
        super().__init__()
        self.held = held
        self.release = asyncio.Event()

    async def handle(self, request: codec.Request) -> Mapping[str, Any] | None:
        if request.correlation_id in self.held:
            await self.release.wait()
        return await super().handle(request)


def connect(server: KafkaServer, host: str = "127.0.0.1") -> tuple[Any, FakeTransport]:
    connection = server._new_connection()
    transport = FakeTransport(host)
    connection.connection_made(transport)
    return connection, transport


def send(connection: Any, transport: FakeTransport, data: bytes) -> int:
    """Read ``data`` as the transport would, until the listener pauses or closes;
    returns how much of it was read."""
    position = 0
    while position < len(data) and not (transport.paused or transport.closed):
        position += receive(connection, data[position:])
    return position


async def settle() -> None:
    for _ in range(200):
        await asyncio.sleep(0)


# --- buffers follow the bytes ----------------------------------------------------------


async def test_a_promised_frame_costs_what_has_arrived_not_what_the_prefix_says() -> None:
    server = KafkaServer(RecordingDispatcher(), limits(socket_request_max_bytes=100 * MB))
    connection, transport = connect(server)
    receive(connection, struct.pack(">i", 100 * MB) + b"x" * 10)
    assert server.quotas.queued_request_bytes == 14
    received = 10
    for _ in range(40):
        buffer = connection.get_buffer(-1)
        room = len(buffer)
        del buffer
        # Room to read is never more than what has arrived (or a first 64 KiB).
        assert room <= max(64 * 1024, received)
        connection.buffer_updated(room)
        received += room
    assert received > 1 * MB
    assert server.quotas.queued_request_bytes == 4 + received
    connection.connection_lost(None)
    assert server.quotas.queued_request_bytes == 0
    assert not transport.closed


async def test_idle_connections_hold_a_few_kib() -> None:
    server = KafkaServer(RecordingDispatcher(), limits())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        connections = [connect(server) for _ in range(200)]
        await settle()
        per_connection = (tracemalloc.get_traced_memory()[0] - before) / len(connections)
    finally:
        tracemalloc.stop()
    assert per_connection < 12 * 1024, per_connection
    for connection, _ in connections:
        connection.connection_lost(None)


async def test_the_receive_buffer_grows_under_load_and_shrinks_back_at_rest() -> None:
    clock = Clock()
    server = KafkaServer(RecordingDispatcher(), limits(), clock=clock)
    connection, transport = connect(server)

    def room() -> int:
        buffer = connection.get_buffer(-1)
        size = len(buffer)
        connection.buffer_updated(0)
        return size

    stream = b"".join(produce_frame(index, 200) for index in range(400))
    position = 0
    while position < len(stream):
        position += send(connection, transport, stream[position:])
        while transport.paused:  # 64 requests queued: the listener waits for answers
            await asyncio.sleep(0)
    await settle()
    assert room() >= 64 * 1024
    clock.advance_ms(1500)
    server.close_expired()
    assert room() <= 4 * 1024
    connection.connection_lost(None)


async def test_frames_cut_at_every_byte_still_decode() -> None:
    stream = produce_frame(1, 10) + produce_frame(2, 6_000) + produce_frame(3, 300)
    runs = []
    for cut in range(1, len(stream)):
        dispatcher = RecordingDispatcher()
        connection, transport = connect(KafkaServer(dispatcher, limits()))
        send(connection, transport, stream[:cut])
        send(connection, transport, stream[cut:])
        runs.append((cut, dispatcher, transport))
    await settle()
    for cut, dispatcher, transport in runs:
        assert dispatcher.seen == [(1, 10), (2, 6_000), (3, 300)], cut
        assert correlation_ids(bytes(transport.written)) == [1, 2, 3], cut
    dispatcher = RecordingDispatcher()
    connection, transport = connect(KafkaServer(dispatcher, limits()))
    for index in range(len(stream)):
        receive(connection, stream[index : index + 1])
    await settle()
    assert dispatcher.seen == [(1, 10), (2, 6_000), (3, 300)]


# --- the request budget ----------------------------------------------------------------


async def test_readers_pause_when_the_budget_is_used_up_and_resume_when_it_is_freed() -> None:
    dispatcher = HeldDispatcher({1})
    server = KafkaServer(dispatcher, limits(queued_max_request_bytes=100_000))
    first, first_transport = connect(server)
    second, second_transport = connect(server)
    send(first, first_transport, produce_frame(1, 60_000))
    await settle()  # being answered: held until the dispatcher lets it go
    partial = produce_frame(2, 60_000)
    position = send(second, second_transport, partial)
    assert second_transport.paused
    assert 100_000 <= server.quotas.queued_request_bytes < 100_000 + MIN_READ
    assert not first_transport.paused
    # A reader that has not paused yet gets one small read, not the room it asks for.
    buffer = first.get_buffer(-1)
    assert len(buffer) <= MIN_READ
    del buffer
    first.buffer_updated(0)
    dispatcher.release.set()
    await settle()
    assert not second_transport.paused
    send(second, second_transport, partial[position:])
    await settle()
    assert [seen[0] for seen in dispatcher.seen] == [1, 2]
    assert server.quotas.queued_request_bytes == 0


async def test_frames_larger_than_what_is_left_of_the_budget_are_all_served() -> None:
    """With every byte of the budget in unfinished frames, nothing would free it: one
    reader reads past it to the end of its frame, then the others go on in turn."""
    dispatcher = RecordingDispatcher()
    server = KafkaServer(dispatcher, limits(queued_max_request_bytes=100_000))
    readers = [connect(server) for _ in range(3)]
    frames = [produce_frame(index, 300_000) for index in range(3)]
    positions = [0, 0, 0]
    for _ in range(1000):
        if all(position == len(frame) for position, frame in zip(positions, frames, strict=True)):
            break
        for index, ((connection, transport), frame) in enumerate(zip(readers, frames, strict=True)):
            if not transport.paused and positions[index] < len(frame):
                chunk = frame[positions[index] : positions[index] + 40_000]
                positions[index] += receive(connection, chunk)
        await settle()
    assert sorted(seen[0] for seen in dispatcher.seen) == [0, 1, 2]
    assert server.quotas.queued_request_bytes == 0
    assert not any(transport.closed for _, transport in readers)


# --- limits in time --------------------------------------------------------------------


async def test_an_idle_connection_is_closed_after_connections_max_idle_ms() -> None:
    clock = Clock()
    dispatcher = HeldDispatcher({1})
    server = KafkaServer(dispatcher, limits(connections_max_idle_ms=5_000), clock=clock)
    idle, idle_transport = connect(server)
    busy, busy_transport = connect(server)
    receive(busy, produce_frame(1, 10))  # a request that takes long is not idleness
    await settle()
    clock.advance_ms(4_999)
    server.close_expired()
    assert not idle_transport.closed
    receive(idle, produce_frame(2, 10))
    await settle()
    clock.advance_ms(4_999)
    server.close_expired()
    assert not idle_transport.closed  # its request just now counts as activity
    clock.advance_ms(2)
    server.close_expired()
    assert idle_transport.closed
    assert not busy_transport.closed
    assert server.quotas.closed == {"connections.max.idle.ms": 1}


async def test_a_request_that_does_not_arrive_in_time_closes_the_connection() -> None:
    clock = Clock()
    server = KafkaServer(
        RecordingDispatcher(),
        limits(socket_request_timeout_ms=1_000, socket_request_max_bytes=100 * MB),
        clock=clock,
    )
    prompt, prompt_transport = connect(server)
    slow, slow_transport = connect(server)
    frame = produce_frame(1, 10)
    receive(prompt, frame[:10])
    receive(slow, struct.pack(">i", 100 * MB) + b"x" * 1000)
    clock.advance_ms(900)
    receive(prompt, frame[10:])  # done in time
    receive(slow, b"x" * 1000)  # trickling is not finishing
    receive(prompt, frame[:10])  # the next request's clock starts now
    clock.advance_ms(200)
    server.close_expired()
    assert slow_transport.closed
    assert not prompt_transport.closed
    slow.connection_lost(None)
    await settle()
    assert server.quotas.closed == {"socket.request.timeout.ms": 1}
    assert server.quotas.queued_request_bytes == 10  # what the prompt one holds


# --- connection limits -----------------------------------------------------------------


def test_connections_over_max_connections_per_ip_are_closed_at_once() -> None:
    quotas = ConnectionQuotas(limits(max_connections_per_ip=2))
    server = KafkaServer(RecordingDispatcher(), quotas.limits, quotas)

    async def run() -> None:
        first, first_transport = connect(server, "10.0.0.1")
        _, second_transport = connect(server, "10.0.0.1")
        _, refused_transport = connect(server, "10.0.0.1")
        _, other_transport = connect(server, "10.0.0.2")
        assert refused_transport.closed
        assert not (first_transport.closed or second_transport.closed or other_transport.closed)
        first.connection_lost(None)
        _, again_transport = connect(server, "10.0.0.1")
        assert not again_transport.closed

    asyncio.run(run())
    assert quotas.refused == {"max.connections.per.ip": 1}
    assert quotas.open_connections == 3


def test_connections_over_max_connections_are_closed_at_once() -> None:
    quotas = ConnectionQuotas(limits(max_connections=2))
    listeners = [KafkaServer(RecordingDispatcher(), quotas.limits, quotas) for _ in range(2)]

    async def run() -> None:
        connect(listeners[0], "10.0.0.1")
        connect(listeners[1], "10.0.0.2")  # the limit is the broker's, over its listeners
        _, refused_transport = connect(listeners[0], "10.0.0.3")
        assert refused_transport.closed

    asyncio.run(run())
    assert quotas.refused == {"max.connections": 1}
    assert quotas.open_connections == 2


def test_the_map_of_a_frame_is_reused_only_once_nothing_reads_it() -> None:
    maps = _FrameMaps()
    first = maps.take(100_000, 100_000)
    frame = memoryview(first)[:100_000].toreadonly()
    still_read = frame[10:20]
    maps.recycle(frame)
    second = maps.take(100_000, 100_000)
    assert second is not first
    del still_read
    maps.recycle(memoryview(second).toreadonly())
    assert maps.take(100_000, 100_000) is second

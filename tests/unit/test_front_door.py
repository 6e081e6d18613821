"""The front door's waits, without sockets: answers deferred by the listener while
acks=all produces replicate (order, the bound on waiting answers, a close after a
refused request, a lost connection), and the commit waits of a partition when a retried
batch waits behind later ones; and a record of ``__consumer_offsets`` the coordinator
cannot read is skipped, not the end of loading its partition."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

import pytest
from brook_broker.groups.offsets_topic import UnknownRecord, decode_key
from brook_broker.protocol import codec
from brook_broker.protocol.server import _MAX_DEFERRED_ANSWERS, Answer, Deferred, KafkaServer
from brook_broker.storage.batch import validate_batches
from kio.schema.errors import ErrorCode

from tests.support.batches import BASE_TIME_MS, make_batch

from .test_protocol_server import FakeTransport, correlation_ids, limits, produce_frame, receive
from .test_replication_partition import Harness, settle

GARBAGE = struct.pack(">ihhi", 14, 0, 9, 99) + b"\xff" * 6
"""A produce frame that cannot be decoded: the listener closes the connection."""


class WaitingDispatcher:
    """Answers acks=1 at once, acks=0 not at all, and acks=-1 once ``release`` is
    called with its correlation id (a produce waiting for its replicas)."""

    supported_versions: Mapping[int, tuple[int, int]] = {0: (3, 9)}

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.waits: dict[int, asyncio.Future[None]] = {}
        self.cancelled: list[int] = []

    async def handle(self, request: codec.Request) -> Answer:
        self.seen.append(request.correlation_id)
        if request.body.acks == 0:
            return None
        if request.body.acks == -1:
            wait = asyncio.get_running_loop().create_future()
            self.waits[request.correlation_id] = wait
            return Deferred(self._committed(request.correlation_id, wait))
        return {"responses": []}

    async def _committed(self, correlation_id: int, wait: asyncio.Future[None]) -> Any:
        try:
            await wait
        except asyncio.CancelledError:
            self.cancelled.append(correlation_id)
            raise
        return {"responses": []}

    def release(self, *correlation_ids: int) -> None:
        for correlation_id in correlation_ids:
            self.waits[correlation_id].set_result(None)

    def api_versions_body(self) -> Mapping[str, Any]:
        return {"api_keys": []}

    def malformed_request(self, api_key: int | None) -> None:
        pass


class Connection:
    """One listener connection over a fake transport, fed whole streams."""

    def __init__(self) -> None:
        self.dispatcher = WaitingDispatcher()
        self.connection = KafkaServer(self.dispatcher, limits())._new_connection()
        self.transport = FakeTransport()
        self.connection.connection_made(self.transport)

    async def send(self, stream: bytes) -> None:
        position = 0
        while position < len(stream) and not self.transport.paused:
            position += receive(self.connection, stream[position:])
            await settle()
        await settle()

    @property
    def answered(self) -> list[int]:
        return correlation_ids(bytes(self.transport.written))


def run(test: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(test, 10))


def test_answers_leave_in_request_order_while_acks_all_waits() -> None:
    async def scenario() -> None:
        c = Connection()
        acks = [-1, 1, 0, -1, 1, 0, 1, -1]
        await c.send(b"".join(produce_frame(i, 10, acks) for i, acks in enumerate(acks)))
        assert c.dispatcher.seen == list(range(len(acks)))  # read on while waiting
        assert c.answered == []
        c.dispatcher.release(3)
        await settle()
        assert c.answered == []  # 0 still waits, and answers go in order
        c.dispatcher.release(0)
        await settle()
        assert c.answered == [0, 1, 3, 4, 6]
        c.dispatcher.release(7)
        await settle()
        assert c.answered == [0, 1, 3, 4, 6, 7]  # each once, none for acks=0
        c.connection.connection_lost(None)

    run(scenario())


def test_a_connection_reads_no_further_than_its_bound_of_waiting_answers() -> None:
    async def scenario() -> None:
        c = Connection()
        count = 3 * _MAX_DEFERRED_ANSWERS
        await c.send(b"".join(produce_frame(i, 10, -1) for i in range(count)))
        assert len(c.dispatcher.seen) == _MAX_DEFERRED_ANSWERS
        for correlation_id in range(count):
            wait = c.dispatcher.waits.get(correlation_id)
            assert wait is not None, f"request {correlation_id} not read once room was made"
            c.dispatcher.release(correlation_id)
            await settle()
            if c.transport.paused:
                c.transport.paused = False
        await settle()
        assert c.answered == list(range(count))
        c.connection.connection_lost(None)

    run(scenario())


def test_answers_due_before_a_refused_request_are_written_before_the_close() -> None:
    async def scenario() -> None:
        c = Connection()
        await c.send(produce_frame(1, 10, -1) + produce_frame(2, 10, 1) + GARBAGE)
        assert not c.transport.is_closing()  # the close waits for the answers due
        c.dispatcher.release(1)
        await settle()
        assert c.answered == [1, 2]
        assert c.transport.is_closing()
        c.connection.connection_lost(None)

    run(scenario())


def test_a_lost_connection_ends_its_waits_and_writes_nothing() -> None:
    async def scenario() -> None:
        c = Connection()
        await c.send(b"".join(produce_frame(i, 10, -1) for i in range(5)))
        c.connection.connection_lost(None)
        await settle()
        assert sorted(c.dispatcher.cancelled) == [0, 1, 2, 3, 4]
        assert c.answered == []

    run(scenario())


async def test_a_retried_batch_is_acknowledged_once_its_original_is_committed(
    tmp_path: Path,
) -> None:
    """A retry waits for its original's offset, below the later batches' waits: it is
    answered as soon as the high watermark passes the original, not once it passes
    everything appended before the retry came."""
    h = Harness(tmp_path)
    h.lead(replicas=(0, 1))
    h.partition.follower_fetched(1, 0)
    first = make_batch([b"a"], producer_id=7, producer_epoch=0, base_sequence=0)
    second = make_batch([b"b"], producer_id=7, producer_epoch=0, base_sequence=1)
    ends = []
    for batch in (first, second, first):
        info = h.partition.append(
            batch, validate_batches(batch), now_ms=BASE_TIME_MS, log_append_time=False
        )
        ends.append(info.last_offset + 1)
    assert ends == [1, 2, 1]  # the retry is answered with the original's offsets
    waits = [h.partition.wait_for_commit(end) for end in ends]
    h.partition.follower_fetched(1, 1)
    await settle()
    assert [wait.done() for wait in waits] == [True, False, True]
    assert waits[2].result() == ErrorCode.none


def test_a_group_record_whose_text_is_not_utf8_is_an_unknown_record() -> None:
    """The coordinator skips unknown records while loading; a decoding error instead
    ended the load and left the partition's groups loading for ever."""
    with pytest.raises(UnknownRecord):
        decode_key(b"\x00\x01\x00\x02\xff\xfe\x00\x01t\x00\x00\x00\x01")

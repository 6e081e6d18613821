"""The broker's internal Kafka client against a real broker over TCP: requests of every
header version, pipelining, a fetch that long-polls, a broker killed under it, and a
reconnect once the broker is back."""

from __future__ import annotations

import asyncio
import time

import pytest
from brook_broker.protocol.client import KafkaClient, KafkaConnectionError
from brook_broker.protocol.sasl import PlainCredentials
from kio.schema.errors import ErrorCode

from tests.support.batches import make_batch

from .brokers import HOST, BrokerProcess, free_port
from .clients import create_topic

PRODUCE, FETCH, METADATA, API_VERSIONS = 0, 1, 3, 18


def produce_body(topic: str, records: bytes, acks: int = -1) -> dict[str, object]:
    return {
        "acks": acks,
        "timeout": 5000,
        "topic_data": [{"name": topic, "partition_data": [{"index": 0, "records": records}]}],
    }


def fetch_body(topic: str, offset: int, max_wait_ms: int = 0) -> dict[str, object]:
    return {
        "max_wait": max_wait_ms,
        "min_bytes": 1,
        "topics": [
            {
                "topic": topic,
                "partitions": [
                    {"partition": 0, "fetch_offset": offset, "partition_max_bytes": 1 << 20}
                ],
            }
        ],
    }


async def test_requests_pipeline_and_match_their_answers(broker: BrokerProcess) -> None:
    create_topic(broker.bootstrap, "client", 1)
    client = KafkaClient(*broker.address, "brook-test")
    try:
        versions = await client.request(API_VERSIONS, 3, {"client_software_name": "brook"})
        assert versions.error_code == ErrorCode.none
        assert {key.api_key for key in versions.api_keys} >= {PRODUCE, FETCH, 23}
        for version in (1, 9, 12):  # non-flexible and flexible headers both ways
            metadata = await client.request(METADATA, version, {"topics": [{"name": "client"}]})
            assert metadata.topics[0].name == "client"
        answers = await asyncio.gather(
            *(
                client.request(PRODUCE, 9, produce_body("client", make_batch([b"%d" % n])))
                for n in range(50)
            )
        )
        offsets = [answer.responses[0].partition_responses[0].base_offset for answer in answers]
        assert sorted(offsets) == list(range(50))
        waiting = asyncio.ensure_future(
            client.request(FETCH, 12, fetch_body("client", 50, max_wait_ms=5000))
        )
        await asyncio.sleep(0.2)
        assert not waiting.done()  # a long poll; the broker answers this connection in order
        other = KafkaClient(*broker.address, "brook-test-producer")
        await other.request(PRODUCE, 9, produce_body("client", make_batch([b"late"])))
        await other.close()
        fetched = await asyncio.wait_for(waiting, 3)
        assert fetched.responses[0].partitions[0].records
    finally:
        await client.close()


async def test_a_killed_broker_fails_requests_in_flight_and_a_restart_heals(
    broker: BrokerProcess,
) -> None:
    create_topic(broker.bootstrap, "client", 1)
    client = KafkaClient(*broker.address, "brook-test")
    try:
        await client.request(METADATA, 12, {"topics": None})
        waiting = asyncio.ensure_future(
            client.request(FETCH, 12, fetch_body("client", 0, max_wait_ms=10_000))
        )
        await asyncio.sleep(0.2)
        started = time.monotonic()
        broker.kill9()
        with pytest.raises(KafkaConnectionError):
            await asyncio.wait_for(waiting, 5)
        assert time.monotonic() - started < 3
        with pytest.raises(KafkaConnectionError, match="cannot connect"):
            await client.request(METADATA, 12, {"topics": None})
        broker.start()
        metadata = await client.request(METADATA, 12, {"topics": [{"name": "client"}]})
        assert metadata.topics[0].error_code == ErrorCode.none
        with pytest.raises(TimeoutError):
            await client.request(FETCH, 12, fetch_body("client", 0, max_wait_ms=5000), timeout=0.2)
        assert not client.connected  # its state unknown, the connection was dropped
        assert (await client.request(API_VERSIONS, 0, {})).error_code == ErrorCode.none
    finally:
        await client.close()
    with pytest.raises(KafkaConnectionError, match="closed"):
        await client.request(API_VERSIONS, 0, {})


async def test_connecting_to_a_port_nobody_listens_on() -> None:
    client = KafkaClient(HOST, free_port(), "brook-test", connect_timeout=2)
    with pytest.raises(KafkaConnectionError, match="cannot connect"):
        await client.request(API_VERSIONS, 3, {})
    await client.close()


async def test_a_peer_that_never_answers_the_handshake_times_out_with_a_reason() -> None:
    """Connected, then silence: the error says it timed out (an asyncio timeout has no
    message of its own)."""
    accepted: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda _, writer: accepted.append(writer), HOST, 0)
    port = silent.sockets[0].getsockname()[1]
    credentials = PlainCredentials("user", "secret")
    client = KafkaClient(HOST, port, "brook-test", connect_timeout=0.3, credentials=credentials)
    try:
        with pytest.raises(KafkaConnectionError, match=f"{HOST}:{port}: timed out$"):
            await client.request(API_VERSIONS, 3, {})
    finally:
        await client.close()
        for writer in accepted:
            writer.close()
        silent.close()
        await silent.wait_closed()

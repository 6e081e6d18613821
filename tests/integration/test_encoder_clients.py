"""Every response a client can ask for, written by the broker's own encoder, read back by
the clients that are pickiest about old versions: each advertised API version decoded
strictly (no trailing bytes), kafka-python pinned to old broker versions, kcat without
ApiVersions, and ``brook groups list`` beside a group whose member's assignment is not
the consumer protocol's."""

from __future__ import annotations

import itertools
import uuid

import kafka
import pytest
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.join_group.v5.request import JoinGroupRequest
from kio.schema.sync_group.v3.request import SyncGroupRequest

from tests.support.entities import build
from tests.support.sample_requests import LAST_LEGACY_PRODUCE, PRODUCE_KEY, full_request

from .brokers import BrokerProcess, KafkaConnection, decode_response, wait_until
from .clients import CONSUME_TIMEOUT_S, create_topic, run_kcat
from .conftest import StartBroker
from .groups import GROUP_BROKER_ARGS, find_coordinator, run_brook

SASL_KEYS = (17, 36)
"""SaslHandshake and SaslAuthenticate change what the connection expects next."""
RECORDS = 20
KAFKA_PYTHON_VERSIONS = [(0, 11), (1, 0), (2, 0), (2, 5), None]
"""Pinned ``api_version``s (None: asked of the broker), oldest first."""


@pytest.fixture
def group_broker(start_broker: StartBroker) -> BrokerProcess:
    return start_broker(*GROUP_BROKER_ARGS, "--offsets-topic-num-partitions", "2")


def test_every_advertised_version_answers_in_a_form_clients_read(broker: BrokerProcess) -> None:
    """A request with every field present, at each version ApiVersions advertises: the
    answer decodes as that version's response, to its last byte."""
    with KafkaConnection(broker.address) as connection:
        advertised = connection.request(
            ApiVersionsRequest(client_software_name="t", client_software_version="1")
        ).api_keys
    unreadable = []
    for api in advertised:
        for version in range(api.min_version, api.max_version + 1):
            if api.api_key in SASL_KEYS or (
                api.api_key == PRODUCE_KEY and version <= LAST_LEGACY_PRODUCE
            ):
                continue
            with KafkaConnection(broker.address) as connection:
                connection.send_frame(full_request(api.api_key, version, 7))
                try:
                    decode_response(api.api_key, version, connection.read_frame(), 7)
                except Exception as error:
                    unreadable.append(f"API key {api.api_key} v{version}: {error!r}")
    assert not unreadable, "\n".join(unreadable)


def test_old_clients_produce_and_consume_in_a_group(group_broker: BrokerProcess) -> None:
    """kafka-python pinned to old broker versions, and kcat without ApiVersions, get
    every record back through a committing group."""
    for api_version in KAFKA_PYTHON_VERSIONS:
        topic = f"pinned-{uuid.uuid4().hex[:8]}"
        create_topic(group_broker.bootstrap, topic, partitions=2)
        pinned = {} if api_version is None else {"api_version": api_version}
        producer = kafka.KafkaProducer(
            bootstrap_servers=group_broker.bootstrap, acks="all", **pinned
        )
        try:
            sent = [producer.send(topic, b"%d" % i) for i in range(RECORDS)]
            producer.flush(timeout=CONSUME_TIMEOUT_S)
            assert all(future.get(timeout=10).offset >= 0 for future in sent)
        finally:
            producer.close(timeout=10)
        consumer = kafka.KafkaConsumer(
            topic,
            bootstrap_servers=group_broker.bootstrap,
            group_id=f"group-{topic}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=int(CONSUME_TIMEOUT_S * 1000),
            **pinned,
        )
        try:
            values = sorted(int(record.value) for record in itertools.islice(consumer, RECORDS))
            consumer.commit()
            committed = sum(consumer.committed(tp) or 0 for tp in consumer.assignment())
        finally:
            consumer.close()
        assert (values, committed) == (list(range(RECORDS)), RECORDS), api_version

    for fallback in ("0.10.0", "2.0.0"):
        topic = f"kcat-{fallback.replace('.', '-')}"
        old = ["-X", "api.version.request=false", "-X", f"broker.version.fallback={fallback}"]
        kcat = ["kcat", "-b", group_broker.bootstrap, *old, "-t", topic]
        lines = b"".join(b"%d\n" % i for i in range(RECORDS))
        produced = run_kcat([*kcat, "-P", "-X", "acks=all"], lines)
        assert produced.returncode == 0, produced.stderr
        consumed = run_kcat([*kcat, "-C", "-o", "beginning", "-e", "-q"], b"")
        assert (consumed.returncode, consumed.stdout) == (0, lines), consumed.stderr


def test_groups_list_shows_a_group_whose_assignment_is_not_the_consumer_protocol(
    group_broker: BrokerProcess,
) -> None:
    """A member of a "consumer" group may hand out bytes of its own: the listing still
    shows every group, and only describing that group says what is wrong."""
    group = "odd-assignment"
    with KafkaConnection(group_broker.address) as connection:
        wait_until(
            lambda: find_coordinator(connection, group) == (0, 0),
            CONSUME_TIMEOUT_S,
            message="the group's coordinator",
        )
        join = {
            "group_id": group,
            "session_timeout": 30_000,
            "rebalance_timeout": 30_000,
            "protocol_type": "consumer",
            "protocols": [{"name": "range", "metadata": bytes(8)}],
        }
        member = connection.request(build(JoinGroupRequest, join)).member_id  # asked to rejoin
        joined = connection.request(build(JoinGroupRequest, {**join, "member_id": member}))
        assert joined.error_code == 0
        garbage = bytes.fromhex("00010203ffffff")
        synced = connection.request(
            build(
                SyncGroupRequest,
                {
                    "group_id": group,
                    "generation_id": joined.generation_id,
                    "member_id": member,
                    "assignments": [{"member_id": member, "assignment": garbage}],
                },
            )
        )
        assert (synced.error_code, synced.assignment) == (0, garbage)
        listed = run_brook("groups", "list", "--bootstrap", group_broker.bootstrap)
        assert listed.returncode == 0, listed.stderr
        assert [line.split()[:3] for line in listed.stdout.splitlines()[1:]] == [
            [group, "Stable", "1"]
        ]
        described = run_brook("groups", "describe", group, "--bootstrap", group_broker.bootstrap)
        assert described.returncode == 1
        assert "not a consumer protocol assignment" in described.stderr

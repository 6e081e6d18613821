"""No client can act as a broker: broker-only requests are refused on the client port,
and the internal listener takes them only from peers that know the cluster secret.

Before the internal listener existed, a BrokerHeartbeat naming broker 1 sent to the
client port was accepted (with ``want_shut_down`` it took broker 1 out of every ISR), and
a Fetch naming a lagging follower's replica id told the leader that follower held
records it did not, moving the high watermark past them.
"""

from __future__ import annotations

import datetime
import struct
import time
import urllib.error
import urllib.request
from pathlib import Path

import confluent_kafka
import pytest
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.broker_heartbeat.v1.request import BrokerHeartbeatRequest
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
from kio.schema.sasl_handshake.v0.request import SaslHandshakeRequest as SaslHandshakeV0
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest
from kio.schema.types import BrokerId

from .brokers import (
    BrokerProcess,
    ConnectionClosed,
    KafkaConnection,
    encode_request,
    wait_until,
)
from .clients import create_topic, list_offset
from .cluster import Cluster, ClusterView
from .conftest import StartBroker, StartCluster

CLUSTER_AUTHORIZATION_FAILED = 31
UNSUPPORTED_SASL_MECHANISM = 33
SASL_AUTHENTICATION_FAILED = 58
SASL_HANDSHAKE, BROKER_HEARTBEAT = 17, 63
API_VERSIONS = ApiVersionsRequest(client_software_name="test", client_software_version="1")
SESSION_TIMEOUT_S = 1.5
"""The brokers' default --broker-session-timeout-ms."""
SASL_SERVER_MAX_RECEIVE_SIZE = 512 * 1024
"""Kafka's sasl.server.max.receive.size: the largest frame before authentication."""


def heartbeat(broker_id: int, epoch: int, *, want_shut_down: bool) -> BrokerHeartbeatRequest:
    return BrokerHeartbeatRequest(
        broker_id=BrokerId(broker_id),
        broker_epoch=epoch,
        current_metadata_offset=2**40,
        want_fence=False,
        want_shut_down=want_shut_down,
    )


def follower_fetch(replica_id: int, topic: str, offset: int) -> FetchRequest:
    partition = FetchPartition(partition=0, fetch_offset=offset, partition_max_bytes=1 << 20)
    return FetchRequest(
        replica_id=BrokerId(replica_id),
        max_wait=datetime.timedelta(0),
        min_bytes=0,
        topics=(FetchTopic(topic=topic, partitions=(partition,)),),
        forgotten_topics_data=(),
    )


def partitions(view: ClusterView, topic: str) -> dict[int, tuple[int, int, frozenset[int]]]:
    """Each partition's leader, leader epoch and ISR."""
    return {
        index: (p.leader, p.leader_epoch, frozenset(p.isr))
        for index, p in view.topics[topic].items()
    }


def authenticate(connection: KafkaConnection, password: str, mechanism: str = "PLAIN") -> int:
    """SaslHandshake v1 then SaslAuthenticate v2 as user ``broker``; the error code."""
    handshake = connection.request(SaslHandshakeRequest(mechanism=mechanism))
    if handshake.error_code != 0:
        return int(handshake.error_code)
    token = b"\0broker\0" + password.encode()
    answer = connection.request(SaslAuthenticateRequest(auth_bytes=token))
    if answer.error_code != 0:
        assert answer.error_message, "a refusal says why"
    return int(answer.error_code)


def is_ready(broker: BrokerProcess) -> bool:
    try:
        with urllib.request.urlopen(f"http://{broker.http_address}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def cluster(start_cluster: StartCluster) -> Cluster:
    """Three brokers with a topic of three partitions, each on all three in sync."""
    cluster = start_cluster(3)
    create_topic(cluster.bootstrap, "t", 3, replication_factor=3)
    cluster.wait_for_full_isr("t", 3)
    return cluster


def test_spoofed_broker_heartbeats_fence_no_broker_and_move_nothing(cluster: Cluster) -> None:
    before = cluster.view("t")
    controller = cluster.active_controller()
    for node in sorted({controller, 0, 1, 2}):
        with KafkaConnection(cluster[node].address) as connection:
            for want_shut_down in (False, True):
                for epoch in (1, 2, 3):
                    answer = connection.request(heartbeat(1, epoch, want_shut_down=want_shut_down))
                    assert answer.error_code == CLUSTER_AUTHORIZATION_FAILED
        # The connection that carried them is closed here, as the reproduction did.
    time.sleep(3 * SESSION_TIMEOUT_S)
    after = cluster.view("t")
    assert after.brokers == frozenset({0, 1, 2}), "no broker was fenced"
    assert partitions(after, "t") == partitions(before, "t"), "no ISR or leader changed"
    with KafkaConnection(cluster[0].address) as connection:
        listed = {key.api_key for key in connection.request(API_VERSIONS).api_keys}
    assert BROKER_HEARTBEAT not in listed, "the client port does not offer BrokerHeartbeat"


def test_internal_listener_takes_only_brokers_that_know_the_secret(cluster: Cluster) -> None:
    before = cluster.view("t")
    secret = cluster.secret_file.read_text().strip()
    internal = cluster[1].internal_address
    # Before authenticating only ApiVersions and the SASL handshake are answered.
    with KafkaConnection(internal) as connection:
        listed = {key.api_key for key in connection.request(API_VERSIONS).api_keys}
        assert {SASL_HANDSHAKE, BROKER_HEARTBEAT} <= listed
    for request in (heartbeat(1, 1, want_shut_down=True), follower_fetch(2, "t", 10**6)):
        with KafkaConnection(internal) as connection:
            connection.send_frame(encode_request(request, connection.next_correlation_id()))
            assert connection.is_closed_by_peer(), "closed without an answer"
    with KafkaConnection(internal) as connection:
        assert authenticate(connection, secret + "x") == SASL_AUTHENTICATION_FAILED
        assert connection.is_closed_by_peer()
    with KafkaConnection(internal) as connection:
        assert authenticate(connection, secret, mechanism="SCRAM-SHA-256") == (
            UNSUPPORTED_SASL_MECHANISM
        )
        assert connection.is_closed_by_peer()
    with KafkaConnection(internal) as connection:  # KIP-43's bare token after handshake v0
        assert connection.request(SaslHandshakeV0(mechanism="PLAIN")).error_code == 0
        connection.send_frame(b"\0broker\0" + secret.encode())
        assert connection.read_frame() == b""
        assert connection.request(API_VERSIONS).error_code == 0
    with KafkaConnection(internal) as connection:
        assert authenticate(connection, secret) == 0
        brokers = connection.request(
            MetadataRequest(
                topics=None,
                allow_auto_topic_creation=False,
                include_topic_authorized_operations=False,
            )
        ).brokers
        # Metadata gives clients' addresses, never the internal ones.
        assert {(b.host, b.port) for b in brokers} == {broker.address for broker in cluster.brokers}
    time.sleep(2 * SESSION_TIMEOUT_S)
    after = cluster.view("t")
    assert after.brokers == frozenset({0, 1, 2})
    assert partitions(after, "t") == partitions(before, "t")


def test_spoofed_follower_fetch_moves_no_high_watermark(start_cluster: StartCluster) -> None:
    # A long session: a follower paused for a moment stays registered and in the ISR,
    # live but lagging.
    cluster = start_cluster(3, "--broker-session-timeout-ms", "20000")
    create_topic(cluster.bootstrap, "f", replicas=[[0, 1, 2]])
    cluster.wait_for_full_isr("f", 1)
    producer = confluent_kafka.Producer({"bootstrap.servers": cluster[0].bootstrap, "acks": "1"})
    producer.produce("f", b"everyone has this", partition=0)
    assert producer.flush(10) == 0
    with KafkaConnection(cluster[0].address) as connection:
        wait_until(lambda: list_offset(connection, "f", 0, -1).offset == 1, 10, message="HW 1")
        cluster[2].pause()
        try:
            producer.produce("f", b"broker 2 does not have this", partition=0)
            assert producer.flush(10) == 0
            time.sleep(0.5)  # broker 1 fetches it; broker 2 cannot
            assert list_offset(connection, "f", 0, -1).offset == 1, "broker 2 lags"
            for offset in (2, 10**6):
                answer = connection.request(follower_fetch(2, "f", offset))
                assert answer.error_code == CLUSTER_AUTHORIZATION_FAILED
                assert answer.responses[0].partitions[0].error_code == (
                    CLUSTER_AUTHORIZATION_FAILED
                )
            assert list_offset(connection, "f", 0, -1).offset == 1, "the high watermark stayed"
            assert set(cluster.partition("f", 0, via=0).isr) == {0, 1, 2}, "ISR unchanged"
        finally:
            cluster[2].resume()
        wait_until(
            lambda: list_offset(connection, "f", 0, -1).offset == 2,
            30,
            message="HW 2 once broker 2 has fetched the record",
        )


def test_a_broker_with_a_wrong_secret_does_not_join(cluster: Cluster, tmp_path: Path) -> None:
    before = cluster.view("t")
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not the cluster's secret\n")
    quorum = cluster[0].extra_args[1]  # --controller-quorum's value: it observes the quorum
    stranger = BrokerProcess(
        tmp_path / "stranger", ["--controller-quorum", quorum], node_id=3, cluster_secret_file=wrong
    )
    stranger.launch()
    try:
        time.sleep(8)
        assert stranger.running, stranger.log_tail()
        assert not is_ready(stranger), "it never catches up on the metadata"
        after = cluster.view("t")
        assert after.brokers == frozenset({0, 1, 2}), "it is not registered"
        assert partitions(after, "t") == partitions(before, "t")
        # The cluster keeps serving.
        producer = confluent_kafka.Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
        producer.produce("t", b"still here", partition=0)
        assert producer.flush(15) == 0
    finally:
        stranger.stop()


def test_a_peer_that_has_not_authenticated_cannot_send_a_large_frame(
    start_broker: StartBroker,
) -> None:
    # Before the limit, a frame promising 100 MB was read (and held) from anyone who
    # reached the internal listener, until socket.request.timeout.ms.
    broker = start_broker("--cluster-secret", "the secret")
    too_large = struct.pack(">i", SASL_SERVER_MAX_RECEIVE_SIZE + 1) + bytes(1000)
    with KafkaConnection(broker.internal_address) as connection:
        connection.send_raw(too_large)
        assert closed_within(connection, 5.0), "closed before reading the frame"
    with KafkaConnection(broker.internal_address) as connection:
        assert connection.request(SaslHandshakeRequest(mechanism="PLAIN")).error_code == 0
        connection.send_raw(too_large)
        assert closed_within(connection, 5.0), "also between the handshake and the token"
    # Once authenticated, frames up to socket.request.max.bytes are taken again.
    names = tuple(f"no-such-topic-{index:030d}" for index in range(20_000))
    request = MetadataRequest(
        topics=tuple(MetadataRequestTopic(name=name, topic_id=None) for name in names),
        allow_auto_topic_creation=False,
        include_topic_authorized_operations=False,
    )
    with KafkaConnection(broker.internal_address) as connection:
        assert authenticate(connection, "the secret") == 0
        frame = encode_request(request, connection.next_correlation_id())
        assert len(frame) > SASL_SERVER_MAX_RECEIVE_SIZE
        connection.send_frame(frame)
        connection.read_frame()  # answered, not closed
        assert connection.request(API_VERSIONS).error_code == 0


def closed_within(connection: KafkaConnection, timeout: float) -> bool:
    """True if the broker closes the connection within ``timeout`` seconds."""
    try:
        return connection.is_closed_by_peer(timeout)
    except TimeoutError:
        return False


def test_connections_to_the_internal_listener_are_bounded(start_broker: StartBroker) -> None:
    # Before the bound, anyone who reached the internal port could hold as many
    # unauthenticated connections as the broker had file descriptors (19,970 were held).
    limit = 30
    broker = start_broker("--cluster-secret", "the secret", "--max-connections", str(limit))
    admitted: list[KafkaConnection] = []
    refused = 0
    try:
        for address in [broker.address] * limit + [broker.internal_address] * (limit + 10):
            connection = KafkaConnection(address)
            try:
                assert connection.request(API_VERSIONS).error_code == 0
            except (ConnectionClosed, ConnectionResetError):
                connection.close()
                refused += 1
                continue
            admitted.append(connection)
        # The clients' connections (all admitted) do not take the brokers' places; of the
        # internal ones, those not authenticated keep at most half of the places (each new
        # one past that closes the oldest).
        internal = [c for c in admitted if c.sock.getpeername()[1] == broker.internal_port]
        assert len(admitted) - len(internal) == limit
        assert refused == 0
        assert sum(not closed_within(c, 0.5) for c in internal) <= limit // 2
        assert is_ready(broker)
    finally:
        for connection in admitted:
            connection.close()

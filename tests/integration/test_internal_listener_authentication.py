"""Peers that never authenticate cannot keep the internal listener's places.

Before the deadline, connections to the internal listener that never authenticated were
kept until connections.max.idle.ms (10 minutes): enough of them filled max.connections
and no broker could open a connection to this one meanwhile.
"""

from __future__ import annotations

import time

from .brokers import ConnectionClosed, KafkaConnection, wait_until
from .conftest import StartBroker
from .test_internal_listener import API_VERSIONS, authenticate, closed_within, is_ready

SECRET = "the secret"
PLACES = 20
DEADLINE_MS = 2000


def answers(connection: KafkaConnection) -> bool:
    """True if the listener answers ApiVersions (taken before authentication)."""
    try:
        return bool(connection.request(API_VERSIONS).error_code == 0)
    except (ConnectionClosed, ConnectionResetError):
        return False


def test_unauthenticated_connections_are_closed_and_brokers_still_get_in(
    start_broker: StartBroker,
) -> None:
    broker = start_broker(
        "--cluster-secret",
        SECRET,
        "--max-connections",
        str(PLACES),
        "--socket-request-timeout-ms",
        str(DEADLINE_MS),
    )
    wait_until(lambda: is_ready(broker), 10, message="ready")
    silent = [KafkaConnection(broker.internal_address) for _ in range(PLACES)]
    try:
        opened = time.monotonic()
        # However many strangers connect, a peer with the secret gets in at once.
        with KafkaConnection(broker.internal_address) as peer:
            assert authenticate(peer, SECRET) == 0
            # At most half the places go to connections still authenticating; the oldest
            # strangers made room for the newest and for the peer.
            assert sum(answers(connection) for connection in silent) <= PLACES // 2
            assert all(closed_within(connection, 5.0) for connection in silent)
            assert time.monotonic() - opened < DEADLINE_MS / 1000 + 3
            assert answers(peer), "authenticated: not closed by the deadline"
        with KafkaConnection(broker.internal_address) as later:
            assert authenticate(later, SECRET) == 0
        assert is_ready(broker)
    finally:
        for connection in silent:
            connection.close()

"""What a client can make a broker hold or write without sending one valid request.

A consumer that asks for many megabytes and does not read them makes the broker hold the
whole response until its connection closes. Once it has closed, that memory must leave
the broker's resident set: with glibc's adjusting map threshold it stayed (twenty unread
30 MB fetch responses left 1.2 GB resident after their connections had closed).

A connection closed for a limit is logged, but a flood of them must not flood the log:
each frame size outside socket.request.max.bytes wrote a warning line of its own.
"""

from __future__ import annotations

import socket
import struct
import time

from .brokers import BrokerProcess, wait_until
from .conftest import StartBroker
from .test_connection_limits import rss_mb
from .test_fetch_max_bytes import fetch_everything, store

MB = 1024 * 1024
STORED_MB = 30
READERS = 10
HELD_MB = 150
"""Growth that shows the unread responses were built (each is about 30 MB)."""
RETURNED_GROWTH_MB = 60
"""Bound on what is still resident after the readers closed, over the RSS before them."""
FLOOD = 100
IDLE_MS = 3000


def not_reading(broker: BrokerProcess) -> socket.socket:
    """A connection whose receive buffer is as small as it gets."""
    reader = socket.create_connection(broker.address, timeout=10.0)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return reader


def test_memory_of_unread_fetch_responses_is_returned(start_broker: StartBroker) -> None:
    broker = start_broker()
    store(broker, "large", 100_000, STORED_MB * 10, batch_size=1_000_000)
    fetch = fetch_everything("large")
    time.sleep(1)
    before = rss_mb(broker.pid)
    readers = []
    try:
        for _ in range(READERS):
            reader = not_reading(broker)
            reader.sendall(fetch)
            readers.append(reader)
        wait_until(lambda: rss_mb(broker.pid) > before + HELD_MB, 30, message="responses built")
    finally:
        for reader in readers:
            reader.close()
    wait_until(
        lambda: rss_mb(broker.pid) < before + RETURNED_GROWTH_MB,
        10,
        message=f"RSS back within {RETURNED_GROWTH_MB} MB of {before:.0f} MB",
    )


def test_a_flood_of_oversized_frames_logs_one_line(start_broker: StartBroker) -> None:
    broker = start_broker()
    for size in (-1, 2**31 - 1) * (FLOOD // 2):
        with socket.create_connection(broker.address, timeout=10.0) as connection:
            connection.sendall(struct.pack(">i", size))
            assert connection.recv(1) == b"", "closed at once"
    closed = broker.metric("brook_connections_closed_total")
    assert closed == FLOOD, "every one is counted"
    lines = [
        line
        for line in broker.log_path.read_text(errors="replace").splitlines()
        if "socket.request.max.bytes" in line
    ]
    assert len(lines) == 1, lines[:5]


def test_unknown_api_keys_and_versions_are_counted(start_broker: StartBroker) -> None:
    broker = start_broker()
    before = broker.metric("brook_malformed_requests_total")
    for api_key, version in ((999, 0), (-1, 0), (3, 99)):  # unknown keys, Metadata v99
        with socket.create_connection(broker.address, timeout=10.0) as connection:
            frame = struct.pack(">hhih", api_key, version, 1, -1)
            connection.sendall(struct.pack(">i", len(frame)) + frame)
            assert connection.recv(1) == b"", "closed, as Kafka does"
    assert broker.metric("brook_malformed_requests_total") == before + 3


def test_a_client_that_stops_reading_is_closed_when_idle(start_broker: StartBroker) -> None:
    """Kafka counts a connection whose responses are not taken as idle; the broker held
    such a connection, and its unsent response, for as long as the client wished."""
    broker = start_broker("--connections-max-idle-ms", str(IDLE_MS))
    store(broker, "large", 100_000, 100, batch_size=1_000_000)
    with not_reading(broker) as reader:
        reader.sendall(fetch_everything("large"))
        started = time.monotonic()
        wait_until(
            lambda: broker.metric("brook_connections") == 0,
            IDLE_MS / 1000 + 10,
            message="the connection that stopped reading was closed",
        )
        assert time.monotonic() - started >= IDLE_MS / 1000 - 1, "not before it was idle"
    assert broker.metric("brook_connections_closed_total") == 1

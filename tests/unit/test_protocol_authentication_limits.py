"""What peers that do not authenticate can hold on a listener with SASL: a connection
must authenticate within socket.request.timeout.ms, and connections still authenticating
take at most half of max.connections (past that the oldest is closed)."""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping

from brook_broker.protocol.sasl import SASL_VERSIONS, PlainAuthenticator
from brook_broker.protocol.server import KafkaServer
from kio.schema.request_header.v1.header import RequestHeader
from kio.schema.sasl_handshake.v0.request import SaslHandshakeRequest
from kio.serial import entity_writer
from kio.static.primitive import i16, i32

from .test_protocol_limits import Clock, connect, settle
from .test_protocol_server import RecordingDispatcher, limits, receive

PASSWORD = "the secret"


class SaslDispatcher(RecordingDispatcher):
    supported_versions: Mapping[int, tuple[int, int]] = {
        **RecordingDispatcher.supported_versions,
        **SASL_VERSIONS,
    }


def server(clock: Clock, **overrides: int) -> KafkaServer:
    return KafkaServer(
        SaslDispatcher(),
        limits(**overrides),
        clock=clock,
        authenticator=PlainAuthenticator({"broker": PASSWORD}),
    )


def authentication() -> bytes:
    """SaslHandshake v0 for PLAIN, then the bare PLAIN token, as size-prefixed frames."""
    buffer = io.BytesIO()
    header = RequestHeader(
        request_api_key=i16(17),
        request_api_version=i16(0),
        correlation_id=i32(1),
        client_id="broker",
    )
    entity_writer(RequestHeader)(buffer, header)
    entity_writer(SaslHandshakeRequest)(buffer, SaslHandshakeRequest(mechanism="PLAIN"))
    handshake = buffer.getvalue()
    token = b"\0broker\0" + PASSWORD.encode()
    return b"".join(struct.pack(">i", len(frame)) + frame for frame in (handshake, token))


async def test_a_connection_that_does_not_authenticate_in_time_is_closed() -> None:
    clock = Clock()
    listener = server(clock, socket_request_timeout_ms=10_000)
    _, silent_transport = connect(listener)
    broker, broker_transport = connect(listener)
    receive(broker, authentication())
    await settle()
    assert broker.authentication.principal == "broker"
    clock.advance_ms(9_999)
    listener.close_expired()
    assert not silent_transport.closed
    clock.advance_ms(2)
    listener.close_expired()
    assert silent_transport.closed
    assert not broker_transport.closed  # authenticated: only the idle timeout applies
    assert listener.quotas.closed == {"socket.request.timeout.ms": 1}


async def test_connections_still_authenticating_take_at_most_half_the_places() -> None:
    clock = Clock()
    listener = server(clock, max_connections=6)
    broker, broker_transport = connect(listener)
    receive(broker, authentication())
    await settle()
    waiting = [connect(listener) for _ in range(3)]
    assert not any(transport.closed for _, transport in waiting)
    _, newest_transport = connect(listener)  # the oldest waiting one makes room
    assert waiting[0][1].closed
    assert not any(transport.closed for _, transport in waiting[1:])
    assert not newest_transport.closed and not broker_transport.closed
    late_broker, late_transport = connect(listener)  # a broker still gets in, and stays
    receive(late_broker, authentication())
    await settle()
    assert late_broker.authentication.principal == "broker"
    assert waiting[1][1].closed and not late_transport.closed
    assert listener.quotas.closed == {"max.connections": 2}
    assert listener.quotas.open_connections == 4  # a closed one's place is free at once

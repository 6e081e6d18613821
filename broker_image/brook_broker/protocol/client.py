"""An asyncio Kafka client over one TCP connection, for the broker's own requests to
other brokers (follower fetches, OffsetForLeaderEpoch, heartbeats to the controller).

It speaks the same kio codec as the listener, the other way round: requests are built
from plain mappings (:mod:`.encoder`, as responses are) with the request header the
request's version declares; responses are read with the v0 or v1 response header
(ApiVersions always v0). Requests are pipelined: each waits for the response carrying
its correlation id. The connection is opened by the first request and again by the
first request after it is lost; losing it fails every request in flight with
:class:`KafkaConnectionError`. Given credentials, the client authenticates each new
connection (SaslHandshake v1, then SaslAuthenticate with PLAIN) before any request.

Responses are received with :class:`asyncio.BufferedProtocol` straight into a buffer
of the frame's size, so a large fetch response is not copied on its way in.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, cast

from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.schema.request_header.v2.header import RequestHeader as RequestHeaderV2
from kio.schema.response_header.v0.header import ResponseHeader as ResponseHeaderV0
from kio.schema.response_header.v1.header import ResponseHeader as ResponseHeaderV1
from kio.serial import entity_reader

from . import encoder
from .codec import API_VERSIONS_KEY
from .sasl import PLAIN, SASL_AUTHENTICATE, SASL_HANDSHAKE, PlainCredentials

log = logging.getLogger(__name__)

_SIZE = struct.Struct(">i")
_MAX_RESPONSE_BYTES = 1 << 30
"""A response size beyond this means the stream is not Kafka's: the connection is dropped."""


class KafkaConnectionError(ConnectionError):
    """The connection could not be opened, or was lost before the response arrived."""


class KafkaAuthenticationError(KafkaConnectionError):
    """The broker refused the credentials (or the mechanism); the connection is closed."""


class KafkaProtocolError(Exception):
    """A response that cannot be decoded (the request is failed, the connection kept)."""


# --- encoding and decoding, without sockets --------------------------------------------


def encode_request(
    api_key: int, api_version: int, correlation_id: int, client_id: str, body: Mapping[str, Any]
) -> bytes:
    """The frame of one request, size prefix included."""
    request_type = _request_type(api_key, api_version)
    parts: encoder.Parts = []
    flexible_header = request_type.__header_schema__ is RequestHeaderV2
    encoder.write_request_header(
        parts, api_key, api_version, correlation_id, client_id, flexible_header
    )
    encoder.write_entity(parts, request_type, body)
    return encoder.frame(parts)


def response_correlation_id(frame: bytes | bytearray | memoryview) -> int:
    """The correlation id every response header starts with."""
    if len(frame) < 4:
        raise KafkaProtocolError("response frame is shorter than its header")
    correlation_id: int = _SIZE.unpack_from(frame, 0)[0]
    return correlation_id


def decode_response(api_key: int, api_version: int, frame: bytes | bytearray | memoryview) -> Any:
    """The kio response of a frame (without its size prefix) answering that request."""
    response_type = _response_type(api_key, api_version)
    flexible = response_type.__flexible__ and api_key != API_VERSIONS_KEY
    view = memoryview(frame).toreadonly()
    try:
        _, offset = _reader(ResponseHeaderV1 if flexible else ResponseHeaderV0)(view, 0)
        response, _ = _reader(response_type)(view, offset)
    except Exception as error:  # kio raises a variety of errors on bad bytes
        raise KafkaProtocolError(
            f"cannot decode {response_type.__name__} v{api_version}: {error}"
        ) from error
    return response


@cache
def _request_type(api_key: int, api_version: int) -> Any:
    request_type = load_request_schema(api_key, api_version)
    if request_type.__header_schema__ not in (RequestHeaderV1, RequestHeaderV2):
        raise ValueError(f"API key {api_key} version {api_version} needs an older header")
    return request_type


@cache
def _response_type(api_key: int, api_version: int) -> Any:
    return load_response_schema(api_key, api_version)


@cache
def _reader(entity_type: type) -> Callable[..., Any]:
    return entity_reader(entity_type)


# --- the connection --------------------------------------------------------------------


class KafkaClient:
    """Requests to one broker over one connection; safe to share between tasks."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        connect_timeout: float = 5.0,
        credentials: PlainCredentials | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self._connect_timeout = connect_timeout
        self._credentials = credentials
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._correlation_ids = itertools.count(1)
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.lost

    async def request(
        self,
        api_key: int,
        api_version: int,
        body: Mapping[str, Any],
        *,
        timeout: float | None = None,
    ) -> Any:
        """Send one request and return its kio response.

        Raises :class:`KafkaConnectionError` if the connection cannot be opened or is
        lost first, ``TimeoutError`` after ``timeout`` seconds (the connection is then
        closed, since its state is unknown), :class:`KafkaProtocolError` for a response
        that cannot be decoded. Produce with acks=0 gets no response: not for this client.
        """
        correlation_id = next(self._correlation_ids) & 0x7FFFFFFF
        frame = encode_request(api_key, api_version, correlation_id, self.client_id, body)
        try:
            async with asyncio.timeout(timeout):
                connection = await self._connect()
                response = await connection.send(correlation_id, frame)
        except TimeoutError:
            self.disconnect(f"no response to API key {api_key} within {timeout} s")
            raise
        return decode_response(api_key, api_version, response)

    def disconnect(self, reason: str) -> None:
        """Drop the connection: requests in flight fail with :class:`KafkaConnectionError`
        (saying ``reason``), and the next request connects again."""
        if self._connection is not None:
            self._connection.close(reason)
            self._connection = None

    async def close(self) -> None:
        """Close the connection and fail whatever is in flight; no more requests."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        self.disconnect("the client was closed")

    async def _connect(self) -> _Connection:
        if self._closed:
            raise KafkaConnectionError(f"the client for {self.host}:{self.port} is closed")
        if self._connection is not None and not self._connection.lost:
            return self._connection
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._open())
            self._connecting.add_done_callback(self._opened)
        return await asyncio.shield(self._connecting)

    def _opened(self, task: asyncio.Task[_Connection]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._connection = task.result()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(_Connection, self.host, self.port)
                if self._credentials is not None:
                    try:
                        await self._authenticate(connection, self._credentials)
                    except BaseException:
                        connection.close("authentication did not complete")
                        raise
        except KafkaConnectionError:
            raise
        except (OSError, TimeoutError) as error:
            raise KafkaConnectionError(
                f"cannot connect to {self.host}:{self.port}: {str(error) or 'timed out'}"
            ) from error
        log.debug("connected to %s:%d", self.host, self.port)
        return connection

    async def _authenticate(self, connection: _Connection, credentials: PlainCredentials) -> None:
        """SASL PLAIN in Kafka requests (KIP-152); a refusal closes the connection."""
        steps = (
            (SASL_HANDSHAKE, 1, {"mechanism": PLAIN}),
            (SASL_AUTHENTICATE, 2, {"auth_bytes": credentials.token()}),
        )
        for api_key, api_version, body in steps:
            correlation_id = next(self._correlation_ids) & 0x7FFFFFFF
            frame = encode_request(api_key, api_version, correlation_id, self.client_id, body)
            response = decode_response(
                api_key, api_version, await connection.send(correlation_id, frame)
            )
            if response.error_code != ErrorCode.none:
                reason = getattr(response, "error_message", None) or response.error_code.name
                raise KafkaAuthenticationError(
                    f"{self.host}:{self.port} refused authentication as "
                    f"{credentials.username!r}: {reason}"
                )


class _Connection(asyncio.BufferedProtocol):
    """One TCP connection: frames out, size-prefixed frames in, matched by correlation id."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[bytearray]] = {}
        self._size = bytearray(4)
        self._frame: bytearray | None = None
        self._filled = 0
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.lost = False
        self._reason = "the connection was lost"

    async def send(self, correlation_id: int, frame: bytes) -> bytearray:
        if self.lost or self._transport is None:
            raise KafkaConnectionError(self._reason)
        future: asyncio.Future[bytearray] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            self._transport.write(frame)
            await self._can_write.wait()
            return await future
        finally:
            self._pending.pop(correlation_id, None)

    def close(self, reason: str) -> None:
        self._reason = reason
        if self._transport is not None:
            self._transport.close()
        self._fail_pending()

    # --- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (asyncio's or uvloop's, which does not subclass asyncio's).
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._reason = f"the connection was lost: {exc}"
        self._fail_pending()
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        target = self._size if self._frame is None else self._frame
        return memoryview(target)[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._frame is None:
            if self._filled < 4:
                return
            size = _SIZE.unpack(self._size)[0]
            if not 4 <= size <= _MAX_RESPONSE_BYTES:
                self.close(f"response size {size} is not a Kafka frame")
                return
            self._frame = bytearray(size)
            self._filled = 0
            return
        if self._filled < len(self._frame):
            return
        frame, self._frame, self._filled = self._frame, None, 0
        correlation_id = response_correlation_id(frame)
        future = self._pending.pop(correlation_id, None)
        if future is None:
            # A request given up on (timed out, cancelled) leaves no one to answer.
            return
        if not future.done():
            future.set_result(frame)

    def eof_received(self) -> bool:
        return False

    def _fail_pending(self) -> None:
        self.lost = True
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(KafkaConnectionError(self._reason))

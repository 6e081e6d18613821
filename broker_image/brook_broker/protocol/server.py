"""Kafka protocol listener: length-prefixed frames over asyncio TCP, answered in order.

Frames are read straight into buffers with :class:`asyncio.BufferedProtocol`: a small
frame is copied once out of a shared receive buffer, a large one (a produce request
with big batches) is received into a buffer of its own and never copied again.
Requests on one connection are handled one after the other, so responses go out in the
order their requests came in, as Kafka clients require. A handler can ask to be told when
the connection that carried its request closes (:func:`when_connection_closes`): the
controller fences a broker whose heartbeat connection dropped without waiting for its
session to time out.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping
from contextvars import ContextVar
from typing import Any, Protocol

from .codec import (
    API_VERSIONS_KEY,
    MalformedRequest,
    Request,
    UnsupportedRequest,
    decode_request,
    encode_response,
)

log = logging.getLogger(__name__)

_SIZE = struct.Struct(">i")
_RECEIVE_BUFFER = 256 * 1024
_LARGE_FRAME = 64 * 1024
_MAX_QUEUED_FRAMES = 64
_UNSUPPORTED_VERSION = 35
_CURRENT: ContextVar[_Connection] = ContextVar("kafka_connection")


def when_connection_closes(key: Hashable, callback: Callable[[], None]) -> None:
    """Call ``callback`` once the connection of the request being handled closes.

    Registering again under the same ``key`` on the same connection replaces the earlier
    callback, so a handler can register on every request of a long-lived connection.
    Outside a request handler this does nothing.
    """
    connection = _CURRENT.get(None)
    if connection is not None:
        connection.on_close[key] = callback


def client_host() -> str:
    """The address of the client whose request is being handled, as Kafka shows it in
    group descriptions ("/127.0.0.1"); empty outside a request handler."""
    connection = _CURRENT.get(None)
    return "" if connection is None else f"/{connection.peer_host}"


class Dispatcher(Protocol):
    """What the listener needs from the broker."""

    supported_versions: Mapping[int, tuple[int, int]]

    def handle(self, request: Request) -> Awaitable[Mapping[str, Any] | None]:
        """Answer one request; ``None`` means no response at all (produce with acks=0)."""
        ...

    def api_versions_body(self) -> Mapping[str, Any]:
        """The ApiVersions response body, used to answer a version we do not speak."""
        ...


class KafkaServer:
    def __init__(self, dispatcher: Dispatcher, max_request_bytes: int) -> None:
        self._dispatcher = dispatcher
        self._max_request_bytes = max_request_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_connection, host, port, reuse_address=True
        )
        address = self._server.sockets[0].getsockname()
        return address[0], address[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()

    def _new_connection(self) -> _Connection:
        return _Connection(self._dispatcher, self._max_request_bytes, self._connections)


class _Connection(asyncio.BufferedProtocol):
    def __init__(
        self, dispatcher: Dispatcher, max_request_bytes: int, registry: set[_Connection]
    ) -> None:
        self._dispatcher = dispatcher
        self._max_request_bytes = max_request_bytes
        self._registry = registry
        self._buffer = bytearray(_RECEIVE_BUFFER)
        self._view = memoryview(self._buffer)
        self._start = 0  # first unconsumed byte in the receive buffer
        self._end = 0  # one past the last received byte
        self._large: bytearray | None = None  # a frame received into its own buffer
        self._large_filled = 0
        self._frames: deque[memoryview | bytes] = deque()
        self._frame_ready = asyncio.Event()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._reading_paused = False
        self._transport: asyncio.Transport | None = None
        self._worker: asyncio.Task[None] | None = None
        self._peer = "?"
        self.peer_host = ""
        self.on_close: dict[Hashable, Callable[[], None]] = {}

    # --- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = str(peer)
        self.peer_host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._registry.add(self)
        self._worker = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.discard(self)
        if self._worker is not None:
            self._worker.cancel()
        self._can_write.set()
        callbacks, self.on_close = list(self.on_close.values()), {}
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("connection-closed callback failed for %s", self._peer)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._large is not None:
            return memoryview(self._large)[self._large_filled :]
        if self._end == len(self._buffer):
            self._compact()
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._large is not None:
            self._large_filled += nbytes
            if self._large_filled == len(self._large):
                self._deliver(memoryview(self._large).toreadonly())
                self._large = None
            return
        self._end += nbytes
        self._split_frames()

    def eof_received(self) -> bool:
        return False

    # --- framing -----------------------------------------------------------------------

    def _split_frames(self) -> None:
        while self._end - self._start >= 4:
            size = _SIZE.unpack_from(self._buffer, self._start)[0]
            if size < 0 or size > self._max_request_bytes:
                log.warning(
                    "closing connection from %s: request size %d is outside 0..%d "
                    "(socket.request.max.bytes)",
                    self._peer,
                    size,
                    self._max_request_bytes,
                )
                self.close()
                return
            body_start = self._start + 4
            available = self._end - body_start
            if available >= size:
                self._deliver(bytes(self._view[body_start : body_start + size]))
                self._start = body_start + size
                continue
            if size >= _LARGE_FRAME:
                # Receive the rest of this frame straight into a buffer of its own.
                self._large = bytearray(size)
                self._large[:available] = self._view[body_start : self._end]
                self._large_filled = available
                self._start = self._end = 0
            break
        if self._start == self._end:
            self._start = self._end = 0

    def _compact(self) -> None:
        pending = self._end - self._start
        self._buffer[:pending] = self._view[self._start : self._end]
        self._start, self._end = 0, pending

    def _deliver(self, frame: memoryview | bytes) -> None:
        self._frames.append(frame)
        self._frame_ready.set()
        if len(self._frames) >= _MAX_QUEUED_FRAMES and not self._reading_paused:
            assert self._transport is not None
            self._transport.pause_reading()
            self._reading_paused = True

    # --- request handling --------------------------------------------------------------

    async def _serve(self) -> None:
        _CURRENT.set(self)  # this task's own context: seen by the handlers it awaits
        try:
            while True:
                if not self._frames:
                    self._frame_ready.clear()
                    await self._frame_ready.wait()
                frame = self._frames.popleft()
                if self._reading_paused and len(self._frames) < _MAX_QUEUED_FRAMES // 2:
                    assert self._transport is not None
                    self._transport.resume_reading()
                    self._reading_paused = False
                response = await self._answer(memoryview(frame))
                if response is None:
                    continue
                if self._transport is None or self._transport.is_closing():
                    return
                self._transport.write(response)
                await self._can_write.wait()
        except asyncio.CancelledError:
            pass
        except _CloseConnection as reason:
            log.info("closing connection from %s: %s", self._peer, reason)
            self.close()
        except Exception:
            log.exception("closing connection from %s after an internal error", self._peer)
            self.close()

    async def _answer(self, frame: memoryview) -> bytes | None:
        try:
            request = decode_request(frame, self._dispatcher.supported_versions)
        except UnsupportedRequest as unsupported:
            if unsupported.api_key == API_VERSIONS_KEY:
                return _unsupported_api_versions(unsupported, self._dispatcher.api_versions_body())
            raise _CloseConnection(str(unsupported)) from None
        except MalformedRequest as malformed:
            raise _CloseConnection(str(malformed)) from None
        body = await self._dispatcher.handle(request)
        if body is None:
            return None
        return encode_response(request, body)

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()


class _CloseConnection(Exception):
    pass


def _unsupported_api_versions(unsupported: UnsupportedRequest, body: Mapping[str, Any]) -> bytes:
    """Answer an ApiVersions request above our versions in the v0 format, with our list."""
    request = Request(API_VERSIONS_KEY, 0, unsupported.correlation_id, None, None)
    return encode_response(request, {**body, "error_code": _UNSUPPORTED_VERSION})

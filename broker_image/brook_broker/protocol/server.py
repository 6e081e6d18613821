"""Kafka protocol listener: length-prefixed frames over asyncio TCP, answered in order.

Frames are read straight into buffers with :class:`asyncio.BufferedProtocol`: a small
frame is copied once out of the connection's receive buffer, a large one (a produce
request with big batches) is received into a buffer of its own and never copied again.
Memory follows the bytes that arrived, never the length a prefix promises: the receive
buffer starts at a few KiB (grown while reads fill it, shrunk back when the connection
rests), and a large frame's buffer is an anonymous memory map that doubles as its bytes
arrive (the kernel remaps it without a copy and backs only the pages written; answered
frames' maps are reused up to a bound, the rest unmapped). Every byte read is granted by
the broker-wide request budget (``queued.max.request.bytes``, :mod:`.quotas`) and given
back once its request is answered; a reader that finds the budget used up pauses. A
connection idle for ``connections.max.idle.ms``, or whose request has not fully arrived
within ``socket.request.timeout.ms``, is closed; so is one on a listener with SASL that
has not authenticated within ``socket.request.timeout.ms`` of connecting (authentication
is its first request). Such connections take at most half of ``max.connections``: past
that, the oldest of them is closed.

Requests on one connection are handled one after the other, and responses go out in the
order their requests came in, as Kafka clients require. A handler whose request has had
all its effects but whose answer must wait (a produce appended, waiting for its
replicas) returns a :class:`Deferred`: the connection goes on to its next requests while
it waits, up to ``_MAX_DEFERRED_ANSWERS`` of them, and the writer sends each answer in
its turn. A producer with several requests in flight then has them replicating together
rather than each waiting for the one before. A handler can ask to be told when
the connection that carried its request closes (:func:`when_connection_closes`): the
controller fences a broker whose heartbeat connection dropped without waiting for its
session to time out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import mmap
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Mapping
from contextvars import ContextVar
from logging import INFO, WARNING
from typing import Any, Protocol, cast

from .codec import (
    API_VERSIONS_KEY,
    MalformedRequest,
    Request,
    UnsupportedRequest,
    decode_request,
    encode_response,
)
from .quotas import UNLIMITED, ConnectionQuotas, ListenerLimits
from .sasl import (
    SASL_SERVER_MAX_RECEIVE_SIZE,
    AuthenticationFailed,
    PlainAuthenticator,
    SaslSession,
)

log = logging.getLogger(__name__)

_SIZE = struct.Struct(">i")
_RECEIVE_BUFFER = 4 * 1024
"""What an idle connection holds; reads that fill it double it, up to the maximum."""
_MAX_RECEIVE_BUFFER = 256 * 1024
_FIRST_FRAME_CHUNK = 64 * 1024
"""The first map of a frame larger than the receive buffer (virtual until written)."""
_IDLE_FRAME_MAP_BYTES = 16 * 1024 * 1024
"""Maps of answered frames kept for the next ones: at most this many bytes of them, and
at most ``_IDLE_FRAME_MAPS`` maps."""
_IDLE_FRAME_MAPS = 32
_MAX_QUEUED_FRAMES = 64
_MAX_DEFERRED_ANSWERS = 64
"""Answers a connection may have waiting (for replication) before it reads no further."""
_MAX_SWEEP_INTERVAL_S = 1.0
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


class Deferred:
    """An answer still to come for a request that has had all its effects: the
    connection reads on, and sends ``body`` (awaited) in its turn."""

    __slots__ = ("body",)

    def __init__(self, body: Coroutine[Any, Any, Mapping[str, Any]]) -> None:
        self.body = body


Answer = Mapping[str, Any] | Deferred | None
"""A handler's answer; ``None`` means no response at all (produce with acks=0)."""
_Queued = bytes | None | asyncio.Task[bytes]
"""An answer waiting for its turn to be written: encoded, none, or still to come."""


class Dispatcher(Protocol):
    """What the listener needs from the broker."""

    supported_versions: Mapping[int, tuple[int, int]]

    def handle(self, request: Request) -> Awaitable[Answer]:
        """Answer one request (see :data:`Answer`)."""
        ...

    def api_versions_body(self) -> Mapping[str, Any]:
        """The ApiVersions response body, used to answer a version we do not speak."""
        ...

    def malformed_request(self, api_key: int | None) -> None:
        """Count a frame refused as malformed (``None``: not even its header was read)."""
        ...


class KafkaServer:
    def __init__(
        self,
        dispatcher: Dispatcher,
        limits: ListenerLimits,
        quotas: ConnectionQuotas | None = None,
        clock: Callable[[], float] = time.monotonic,
        authenticator: PlainAuthenticator | None = None,
    ) -> None:
        """``quotas`` are shared by the broker's listeners (by default this one's own);
        with an ``authenticator`` each connection must authenticate first (SASL)."""
        self._dispatcher = dispatcher
        self._authenticator = authenticator
        self._limits = limits
        self.quotas = ConnectionQuotas(limits, clock) if quotas is None else quotas
        self._clock = clock
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._connections: set[_Connection] = set()
        self._authenticating: dict[_Connection, None] = {}
        """Connections that have not yet authenticated, oldest first."""
        self._frame_maps = _FrameMaps()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_connection, host, port, reuse_address=True
        )
        self._sweeper = loop.create_task(self._sweep(), name="kafka connection sweeper")
        address = self._server.sockets[0].getsockname()
        return address[0], address[1]

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()

    def close_expired(self) -> None:
        """Close connections idle for ``connections.max.idle.ms`` or whose request has not
        fully arrived within ``socket.request.timeout.ms``; shrink resting ones' buffers."""
        now = self._clock()
        for connection in list(self._connections):
            connection.check(now)

    async def _sweep(self) -> None:
        bounds = [
            bound / 1000 / 10
            for bound in (
                self._limits.connections_max_idle_ms,
                self._limits.socket_request_timeout_ms,
            )
            if bound != UNLIMITED
        ]
        interval = min([_MAX_SWEEP_INTERVAL_S, *bounds])
        while True:
            await asyncio.sleep(interval)
            self.close_expired()

    def _new_connection(self) -> _Connection:
        connection = _Connection(
            self._dispatcher,
            self._limits,
            self.quotas,
            self._connections,
            self._clock,
            self._frame_maps,
        )
        if self._authenticator is not None:
            connection.authentication = self._authenticator.session()
            connection.authenticating = self._authenticating
        return connection


class _Connection(asyncio.BufferedProtocol):
    def __init__(
        self,
        dispatcher: Dispatcher,
        limits: ListenerLimits,
        quotas: ConnectionQuotas,
        registry: set[_Connection],
        clock: Callable[[], float],
        frame_maps: _FrameMaps,
    ) -> None:
        self._dispatcher = dispatcher
        self._limits = limits
        self._quotas = quotas
        self._budget = quotas.budget
        self._registry = registry
        self._clock = clock
        self._frame_maps = frame_maps
        self._buffer = bytearray(_RECEIVE_BUFFER)
        self._view = memoryview(self._buffer)
        self._start = 0  # first unconsumed byte in the receive buffer
        self._end = 0  # one past the last received byte
        self._read_filled = False  # the last read took all the room it was given
        self._frame: mmap.mmap | None = None  # a large frame received into a map of its own
        self._frame_size = 0
        self._frame_filled = 0
        self._frame_began: float | None = None  # when the first byte of a partial frame came
        self._last_active = clock()
        self._connected_at = self._last_active
        self._granted = 0  # budget granted to the read in progress
        self._held = 0  # budget held: bytes read and not yet answered
        self._whole = 0  # the part of it in whole frames (queued or being answered)
        self._frames: deque[memoryview | bytes] = deque()
        self._handling = False
        self._queued: deque[_Queued] = deque()  # answers behind a deferred one, in order
        self._writer: asyncio.Task[None] | None = None  # writes them while any is queued
        self._room_for_answers = asyncio.Event()
        self._frame_ready = asyncio.Event()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._unsent = 0  # bytes of responses not yet taken, as of the last check
        self._paused: set[str] = set()  # why reading is paused: "queue", "budget"
        self._transport: asyncio.Transport | None = None
        self._worker: asyncio.Task[None] | None = None
        self._admitted = False
        self._lost = False
        self._peer = "?"
        self.peer_host = ""
        self.on_close: dict[Hashable, Callable[[], None]] = {}
        self.authentication: SaslSession | None = None
        """Who the connection proved to be, on a listener that authenticates."""
        self.authenticating: dict[_Connection, None] | None = None
        """The listener's connections that have not yet authenticated, oldest first."""

    # --- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (asyncio's or uvloop's, which does not subclass asyncio's).
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer)
        self.peer_host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if self.authenticating is not None:
            self._make_room_to_authenticate(self.authenticating)
        if not self._quotas.admit(self.peer_host):
            self._transport.abort()
            return
        self._admitted = True
        if self.authenticating is not None:
            self.authenticating[self] = None
        self._registry.add(self)
        self._worker = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted or self._lost:
            return
        self._lost = True
        self._registry.discard(self)
        self._quotas.release(self.peer_host)
        self._end_authenticating()
        self._budget.dropped(self, self._held + self._granted, self._whole)
        self._held = self._granted = self._whole = 0
        self._frames.clear()
        if self._frame is not None:
            self._frame_maps.give(self._frame)
            self._frame = None
        if self._worker is not None:
            self._worker.cancel()
        if self._writer is not None:
            self._writer.cancel()
        self._drop_queued()
        self._can_write.set()
        callbacks, self.on_close = list(self.on_close.values()), {}
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("connection-closed callback failed for %s", self._peer)

    def pause_writing(self) -> None:
        self._can_write.clear()
        self._unsent = -1  # the idle clock starts at the next check

    def resume_writing(self) -> None:
        self._can_write.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._frame is not None:
            if self._frame_filled == len(self._frame):
                capacity = min(self._frame_size, 2 * len(self._frame))
                self._frame = _grown(self._frame, self._frame_filled, capacity)
            view = memoryview(self._frame)[self._frame_filled : self._frame_size]
        else:
            if self._end == len(self._buffer):
                self._make_room()
            view = self._view[self._end :]
        self._granted = self._budget.grant(self, len(view))
        return view[: self._granted]

    def buffer_updated(self, nbytes: int) -> None:
        self._read_filled = nbytes == self._granted
        self._budget.refund(self._granted - nbytes)
        self._granted = 0
        self._held += nbytes
        self._last_active = self._clock()
        if self._frame is not None:
            self._frame_filled += nbytes
            if self._frame_filled == self._frame_size:
                frame, self._frame = self._frame, None
                self._deliver(memoryview(frame)[: self._frame_size].toreadonly())
        else:
            self._end += nbytes
            self._split_frames()
        if self._frame_began is None and (self._frame is not None or self._end > self._start):
            self._frame_began = self._last_active
        if self._budget.must_pause(self):
            self._pause("budget")

    def eof_received(self) -> bool:
        return False

    def resume_after_budget(self) -> None:
        self._resume("budget")

    # --- framing -----------------------------------------------------------------------

    def _split_frames(self) -> None:
        while self._end - self._start >= 4:
            size = _SIZE.unpack_from(self._buffer, self._start)[0]
            limit, setting = self._frame_limit()
            if size < 0 or size > limit:
                self._close_for(setting, f"request size {size} is outside 0..{limit}", WARNING)
                return
            body_start = self._start + 4
            available = self._end - body_start
            if available >= size:
                self._deliver(bytes(self._view[body_start : body_start + size]))
                self._start = body_start + size
                continue
            if 4 + size > len(self._buffer):
                # Receive the rest of this frame straight into a map of its own, sized by
                # what has arrived (the map grows with the bytes, never with the prefix).
                capacity = min(size, max(_FIRST_FRAME_CHUNK, 2 * available))
                self._frame = self._frame_maps.take(size, capacity)
                self._frame[:available] = self._view[body_start : self._end]
                self._frame_size, self._frame_filled = size, available
                self._start = self._end = 0
            break
        if self._start == self._end:
            self._start = self._end = 0

    def _frame_limit(self) -> tuple[int, str]:
        """The largest frame accepted now, and the setting that says so. Until SASL
        completes it is Kafka's ``sasl.server.max.receive.size``: a peer that has not
        proven itself must not make the broker read and hold a 100 MB frame."""
        session = self.authentication
        if session is not None and session.principal is None:
            return SASL_SERVER_MAX_RECEIVE_SIZE, "sasl.server.max.receive.size"
        return self._limits.socket_request_max_bytes, "socket.request.max.bytes"

    def _make_room(self) -> None:
        """The receive buffer is full: double it if the last read filled all it was given
        (more is coming), else move the unconsumed bytes to its start."""
        pending = self._end - self._start
        if self._read_filled and len(self._buffer) < _MAX_RECEIVE_BUFFER:
            self._replace_buffer(2 * len(self._buffer))
        else:
            self._buffer[:pending] = self._view[self._start : self._end]
            self._start, self._end = 0, pending

    def _replace_buffer(self, size: int) -> None:
        pending = self._end - self._start
        buffer = bytearray(size)
        buffer[:pending] = self._view[self._start : self._end]
        self._buffer, self._view = buffer, memoryview(buffer)
        self._start, self._end = 0, pending

    def _deliver(self, frame: memoryview | bytes) -> None:
        self._frames.append(frame)
        self._frame_began = None
        self._whole += 4 + len(frame)
        self._budget.arrived(self, 4 + len(frame))
        self._frame_ready.set()
        if len(self._frames) >= _MAX_QUEUED_FRAMES:
            self._pause("queue")

    def _pause(self, reason: str) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if not self._paused:
            self._transport.pause_reading()
        self._paused.add(reason)

    def _resume(self, reason: str) -> None:
        if reason not in self._paused:
            return
        self._paused.discard(reason)
        if self._paused or self._transport is None or self._transport.is_closing():
            return
        self._transport.resume_reading()
        if self._frame_began is not None:
            self._frame_began = self._clock()  # time paused by the broker is not the client's

    # --- limits in time ----------------------------------------------------------------

    def check(self, now: float) -> None:
        """Close this connection if it is idle or late with a request, as of ``now``;
        shrink a grown receive buffer once the connection rests. Reading paused by the
        broker stops both clocks. A client that does not take its responses is idle
        since it last took any bytes, whatever else is pending (as in Kafka): otherwise
        it would keep the connection and the unsent response for as long as it liked."""
        if self._lost:
            return
        limits = self._limits
        if self.authenticating is not None and self in self.authenticating:
            waited_ms = (now - self._connected_at) * 1000
            if UNLIMITED != limits.socket_request_timeout_ms <= waited_ms:
                reason = f"not authenticated {waited_ms:.0f} ms after connecting"
                self._close_for("socket.request.timeout.ms", reason, INFO)
                return
        if self._can_write.is_set():
            if self._paused:
                return
            if self._frame_began is not None:
                waited_ms = (now - self._frame_began) * 1000
                if UNLIMITED != limits.socket_request_timeout_ms <= waited_ms:
                    reason = f"request not complete after {waited_ms:.0f} ms"
                    self._close_for("socket.request.timeout.ms", reason, INFO)
                return
            if self._frames or self._handling or self._queued:
                return
        elif self._transport is not None:
            unsent = self._transport.get_write_buffer_size()
            if unsent != self._unsent:
                self._unsent, self._last_active = unsent, now
        idle_ms = (now - self._last_active) * 1000
        if UNLIMITED != limits.connections_max_idle_ms <= idle_ms:
            self._close_for("connections.max.idle.ms", f"idle for {idle_ms:.0f} ms", INFO)
        elif idle_ms >= _MAX_SWEEP_INTERVAL_S * 1000 and len(self._buffer) > _RECEIVE_BUFFER:
            self._replace_buffer(_RECEIVE_BUFFER)

    # --- request handling --------------------------------------------------------------

    async def _serve(self) -> None:
        _CURRENT.set(self)  # this task's own context: seen by the handlers it awaits
        try:
            while True:
                if not self._frames:
                    self._frame_ready.clear()
                    await self._frame_ready.wait()
                frame = self._frames.popleft()
                if len(self._frames) < _MAX_QUEUED_FRAMES // 2:
                    self._resume("queue")
                self._handling = True
                try:
                    await self._respond(frame)
                finally:
                    self._handling = False
                    self._last_active = self._clock()
                    self._give_back(4 + len(frame))
                    if isinstance(frame, memoryview):
                        self._frame_maps.recycle(frame)
                    del frame
                if self._transport is None or self._transport.is_closing():
                    return
        except asyncio.CancelledError:
            pass
        except CloseConnection as reason:
            log.info("closing connection from %s: %s", self._peer, reason)
            await self._close_after_answers()
        except AuthenticationFailed as failed:
            log.info("closing connection from %s: %s", self._peer, failed)
            await self._close_after_answers(failed.response)
        except Exception:
            log.exception("closing connection from %s after an internal error", self._peer)
            self.close()

    async def _respond(self, frame: memoryview | bytes) -> None:
        """Answer one frame and write the response (none for produce with acks=0), or
        queue it behind deferred answers still to come."""
        response = await self._answer(memoryview(frame))
        if not self._queued and not isinstance(response, asyncio.Task):
            await self._write(response)
            return
        self._queued.append(response)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_queued())
        while len(self._queued) >= _MAX_DEFERRED_ANSWERS:
            self._room_for_answers.clear()
            await self._room_for_answers.wait()

    async def _write(self, response: bytes | None) -> None:
        if response is None or self._transport is None or self._transport.is_closing():
            return
        self._transport.write(response)
        await self._can_write.wait()

    async def _write_queued(self) -> None:
        """Write the queued answers in order, each once it is ready."""
        try:
            while self._queued:
                head = self._queued[0]
                response = await head if isinstance(head, asyncio.Task) else head
                self._queued.popleft()
                self._room_for_answers.set()
                await self._write(response)
                self._last_active = self._clock()
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("closing connection from %s after an internal error", self._peer)
            self.close()
        finally:
            self._writer = None
            self._drop_queued()

    async def _close_after_answers(self, last: bytes | None = None) -> None:
        """Close once the answers due to the requests before this one are written, then
        ``last``: as in Kafka, which reads a connection's next request only after answering
        the one before, refusing a request by closing does not take their answers with it."""
        if self._writer is not None:
            try:
                await asyncio.wait([self._writer])
            except asyncio.CancelledError:
                return  # the connection was lost meanwhile
        if last is not None and self._transport is not None and not self._transport.is_closing():
            self._transport.write(last)
        self.close()

    def _drop_queued(self) -> None:
        """Answers that will never be sent: their waits end unawaited."""
        queued, self._queued = self._queued, deque()
        for item in queued:
            if isinstance(item, asyncio.Task):
                item.cancel()
        self._room_for_answers.set()

    def _give_back(self, size: int) -> None:
        """Return an answered request's bytes to the budget (a closed connection already
        returned all it held)."""
        if not self._lost:
            self._held -= size
            self._whole -= size
            self._budget.answered(size)

    async def _answer(self, frame: memoryview) -> _Queued:
        session = self.authentication
        if session is not None and session.expects_raw_token:
            token = session.raw_token(bytes(frame))
            self._end_authenticating()
            return _SIZE.pack(len(token)) + token
        try:
            request = decode_request(frame, self._dispatcher.supported_versions)
        except UnsupportedRequest as unsupported:
            if unsupported.api_key == API_VERSIONS_KEY:
                return _unsupported_api_versions(unsupported, self._dispatcher.api_versions_body())
            self._dispatcher.malformed_request(unsupported.api_key)
            raise CloseConnection(str(unsupported)) from None
        except MalformedRequest as malformed:
            # Kafka closes a connection whose request it cannot parse; so do we.
            self._dispatcher.malformed_request(malformed.api_key)
            raise CloseConnection(str(malformed)) from None
        if session is not None:
            answer = session.answer(request)
            if session.principal is not None:
                self._end_authenticating()
            if answer is not None:
                return encode_response(request, answer)
        body = await self._dispatcher.handle(request)
        if body is None:
            return None
        if isinstance(body, Deferred):
            # Only the header is needed to encode: the frame's map is free for reuse.
            header = dataclasses.replace(request, body=None)
            return asyncio.get_running_loop().create_task(_encoded_when_ready(header, body.body))
        return encode_response(request, body)

    def _make_room_to_authenticate(self, authenticating: dict[_Connection, None]) -> None:
        """Connections still authenticating take at most half of ``max.connections``; past
        that the oldest of them is closed (before this one is admitted). Peers that do not
        know the password cannot keep the places, and a broker, which authenticates at
        once, still gets in."""
        most = self._limits.max_connections
        if most == UNLIMITED or len(authenticating) < max(1, most // 2):
            return
        oldest = next(iter(authenticating))
        reason = f"the oldest of {len(authenticating)} connections still authenticating"
        oldest._close_for("max.connections", reason, INFO)
        oldest.connection_lost(None)  # its place is free now, not once the loop gets to it

    def _end_authenticating(self) -> None:
        """The connection authenticated or closed: it no longer counts as authenticating."""
        if self.authenticating is not None:
            self.authenticating.pop(self, None)

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _close_for(self, setting: str, reason: str, level: int) -> None:
        """Close because of a limit, counted by the setting that set it. Responses not
        yet sent are dropped: a client that stopped reading would never take them, and
        a closing transport waits for its buffer to drain."""
        self._quotas.closed_for(setting, self._peer, reason, level)
        if self._transport is not None:
            self._transport.abort()


class _FrameMaps:
    """Anonymous maps for frames larger than a receive buffer, reused once their frame
    has been answered: each page of a fresh map costs a fault and the kernel's zeroing
    when first written (several times what receiving a megabyte costs), a reused page
    nothing. A bounded few idle maps are kept; the rest are unmapped, which gives their
    memory back to the system at once."""

    def __init__(self) -> None:
        self._idle: list[mmap.mmap] = []
        self._idle_bytes = 0

    def take(self, size: int, capacity: int) -> mmap.mmap:
        """A map for a frame of ``size`` bytes, at least ``capacity`` long: the smallest
        idle one that holds the whole frame, else the largest, else a new one."""
        if not self._idle:
            return mmap.mmap(-1, capacity, flags=mmap.MAP_PRIVATE)
        fitting = [frame_map for frame_map in self._idle if len(frame_map) >= size]
        chosen = min(fitting, key=len) if fitting else max(self._idle, key=len)
        self._idle.remove(chosen)
        self._idle_bytes -= len(chosen)
        return chosen if len(chosen) >= capacity else _grown(chosen, 0, capacity)

    def recycle(self, frame: memoryview) -> None:
        """Keep the map under an answered frame, unless something still reads it."""
        frame_map = frame.obj
        try:
            frame.release()
        except BufferError:
            return
        if isinstance(frame_map, mmap.mmap):
            self.give(frame_map)

    def give(self, frame_map: mmap.mmap) -> None:
        if (
            len(self._idle) >= _IDLE_FRAME_MAPS
            or self._idle_bytes + len(frame_map) > _IDLE_FRAME_MAP_BYTES
        ):
            return
        try:
            frame_map.resize(len(frame_map))  # refused while a view of the map is alive
        except (BufferError, SystemError):  # SystemError: no mremap, no reuse (macOS)
            return
        self._idle.append(frame_map)
        self._idle_bytes += len(frame_map)


def _grown(frame_map: mmap.mmap, filled: int, size: int) -> mmap.mmap:
    """``frame_map`` made ``size`` bytes long. Linux remaps a private map in place: no
    copy, the new pages unbacked until written. Without mremap (macOS) the ``filled``
    bytes move to a new map."""
    try:
        frame_map.resize(size)
    except SystemError:
        grown = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
        grown[:filled] = frame_map[:filled]
        return grown
    return frame_map


async def _encoded_when_ready(
    request: Request, body: Coroutine[Any, Any, Mapping[str, Any]]
) -> bytes:
    return encode_response(request, await body)


class CloseConnection(Exception):
    """Raised while answering a request to close its connection instead (after the
    answers due before it): a request that cannot be read, or one whose sender learns of
    an error only so (produce with acks=0, as in Kafka)."""


def _unsupported_api_versions(unsupported: UnsupportedRequest, body: Mapping[str, Any]) -> bytes:
    """Answer an ApiVersions request above our versions in the v0 format, with our list."""
    request = Request(API_VERSIONS_KEY, 0, unsupported.correlation_id, None, None)
    return encode_response(request, {**body, "error_code": _UNSUPPORTED_VERSION})

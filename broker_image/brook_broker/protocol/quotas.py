"""What clients may make a broker hold, shared by all its listeners as Kafka's
``ConnectionQuotas`` and request memory pool are: connections in all and per client
address (``max.connections``, ``max.connections.per.ip``), and bytes of requests received
and not yet answered (``queued.max.request.bytes``).

Without these a few bytes from each of many connections could make the broker hold
gigabytes: the limits turn a flood into refused connections and paused readers.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

UNLIMITED = -1
REFUSAL_LOG_INTERVAL_S = 10.0
"""At most one log line per reason to refuse or close connections in this long: a flood
must not flood the log."""

MIN_READ = 4 * 1024
"""A read granted even when the budget is used up, so that a reader that has not yet
paused can take what the socket holds and then pause (a read needs a buffer)."""


@dataclass(frozen=True)
class ListenerLimits:
    """Kafka's settings for its socket server; ``UNLIMITED`` (-1) where Kafka means none."""

    socket_request_max_bytes: int
    socket_request_timeout_ms: int
    connections_max_idle_ms: int
    queued_max_request_bytes: int
    max_connections: int
    max_connections_per_ip: int


class Reader(Protocol):
    """A connection that reads requests: paused by the budget, resumed by it."""

    def resume_after_budget(self) -> None: ...


class RequestBudget:
    """``queued.max.request.bytes``: bytes received on all connections and not yet answered.

    Reads are granted from it before they happen and charged by what they bring, so that
    memory follows bytes received, not sizes promised. A reader that finds it used up
    pauses until answered requests give bytes back. When no whole request is waiting for
    an answer, nothing would give bytes back: then one reader (the first to pause) may
    read past the budget until a whole request has arrived (the overdraft), so a request
    larger than the whole budget is still served and unfinished frames cannot wedge the
    listener. At most the budget plus one request (``socket.request.max.bytes``) is held.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._answering = 0  # bytes of whole requests not yet answered
        self._waiting: dict[Reader, None] = {}  # paused readers, in the order they paused
        self._overdraft: Reader | None = None

    @property
    def exhausted(self) -> bool:
        return self.limit != UNLIMITED and self.used >= self.limit

    def grant(self, reader: Reader, wanted: int) -> int:
        """Reserve bytes for one read of at most ``wanted`` bytes; returns how many."""
        if self.limit == UNLIMITED or self._overdraft is reader:
            granted = wanted
        else:
            granted = min(wanted, max(self.limit - self.used, MIN_READ))
        self.used += granted
        return granted

    def refund(self, size: int) -> None:
        """The part of a grant that a read did not use."""
        if size:
            self.used -= size
            self._wake()

    def must_pause(self, reader: Reader) -> bool:
        """After a read: False to go on reading, True if ``reader`` must pause (it will be
        resumed through :meth:`Reader.resume_after_budget`)."""
        if not self.exhausted or self._overdraft is reader:
            return False
        if self._overdraft is None and not self._answering:
            self._overdraft = reader
            return False
        self._waiting[reader] = None
        return True

    def arrived(self, reader: Reader, size: int) -> None:
        """A whole request of ``size`` bytes has arrived on ``reader``; an overdraft ends."""
        self._answering += size
        if self._overdraft is reader:
            self._overdraft = None

    def answered(self, size: int) -> None:
        """A request of ``size`` bytes has been answered: its bytes come back."""
        self._answering -= size
        self.used -= size
        self._wake()

    def dropped(self, reader: Reader, held: int, whole: int) -> None:
        """``reader`` closed, holding ``held`` bytes, ``whole`` of them in whole requests."""
        self._waiting.pop(reader, None)
        if self._overdraft is reader:
            self._overdraft = None
        self._answering -= whole
        self.used -= held
        self._wake()

    def _wake(self) -> None:
        if not self._waiting:
            return
        if not self.exhausted:
            waiting, self._waiting = list(self._waiting), {}
        elif self._overdraft is None and not self._answering:
            first = next(iter(self._waiting))
            del self._waiting[first]
            self._overdraft = first
            waiting = [first]
        else:
            return
        for reader in waiting:
            reader.resume_after_budget()


class ConnectionQuotas:
    """Connections open per client address and in all, the request budget, and counts of
    connections refused and closed by reason (read by the broker's metrics)."""

    def __init__(self, limits: ListenerLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.budget = RequestBudget(limits.queued_max_request_bytes)
        self.open_connections = 0
        self.refused: Counter[str] = Counter()
        self.closed: Counter[str] = Counter()
        self._per_ip: Counter[Hashable] = Counter()
        self._clock = clock
        self._last_logged: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    @property
    def queued_request_bytes(self) -> int:
        return self.budget.used

    def admit(self, host: str) -> bool:
        """Count a new connection from ``host``, or refuse it (False) when it is over a limit."""
        limits = self.limits
        if limits.max_connections != UNLIMITED and self.open_connections >= limits.max_connections:
            self._refuse("max.connections", limits.max_connections, host)
            return False
        if (
            limits.max_connections_per_ip != UNLIMITED
            and self._per_ip[host] >= limits.max_connections_per_ip
        ):
            self._refuse("max.connections.per.ip", limits.max_connections_per_ip, host)
            return False
        self.open_connections += 1
        self._per_ip[host] += 1
        return True

    def release(self, host: str) -> None:
        """An admitted connection from ``host`` has closed."""
        self.open_connections -= 1
        self._per_ip[host] -= 1
        if not self._per_ip[host]:
            del self._per_ip[host]

    def closed_for(self, setting: str, client: str, reason: str, level: int) -> None:
        """Count a connection the broker closed because of ``setting``, and log it (at
        most one line per setting per ``REFUSAL_LOG_INTERVAL_S``)."""
        self.closed[setting] += 1
        self._log(
            level,
            "connection closed",
            f"closed:{setting}",
            client=client,
            limit=setting,
            reason=reason,
        )

    def _refuse(self, setting: str, limit: int, host: str) -> None:
        self.refused[setting] += 1
        self._log(
            logging.WARNING, "connection refused", setting, client=host, limit=f"{setting}={limit}"
        )

    def _log(self, level: int, message: str, key: str, **fields: str) -> None:
        now = self._clock()
        last = self._last_logged.get(key)
        if last is not None and now - last < REFUSAL_LOG_INTERVAL_S:
            self._unlogged[key] += 1
            return
        self._last_logged[key] = now
        log.log(
            level,
            message,
            extra={**fields, "also_since_last_line": self._unlogged.pop(key, 0)},
        )

"""The active controller: broker sessions, fencing, controlled shutdown, leader rebalance.

Every voter runs one; it acts only while its node leads the Raft quorum. Sessions live
in memory: the controller notes when each broker last heartbeated, and fences a broker
(``FenceBroker``: its leaderships pass to other ISR members) once it has been silent for
``--broker-session-timeout-ms``, or at once when the connection its heartbeats came on
closes and no new heartbeat follows within one interval (a killed process closes its
sockets). A controller that just took over knows nobody's last heartbeat: it starts every
clock at its own start, giving brokers a few intervals to find it, except voters it has
no Raft connection to (typically the controller that just died), which get one interval;
so does a controller whose own event loop stalled (or whose process was stopped), since
the silence it then sees is its own. Decisions that change
metadata are commands through the quorum, so a deposed controller's late decisions are
refused or ignored by the state machine (broker epochs, leader epochs).

Unclean elections need no timer here: the state machine elects an unclean leader when a
replica of an offline partition whose topic allows it comes back, and at once when a
topic starts allowing it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from .. import metrics
from ..config import BrokerConfig
from ..metadata.cluster_state import PREFERRED
from ..metadata.commands import BeginControlledShutdown, ElectLeaders, FenceBroker, UnfenceBroker
from ..metadata.errors import ApiError
from ..metadata.model import BrokerRegistration, TopicState
from ..metadata.quorum import MetadataQuorum

log = logging.getLogger(__name__)

SWEEP_SECONDS = 0.05
"""How often sessions are checked."""

REBALANCE_SECONDS = 5.0
"""How often leadership moves back to preferred replicas that are in sync again."""

TAKEOVER_GRACE_INTERVALS = 4
"""A new controller fences a silent broker after this many heartbeat intervals (or the
session timeout, if shorter)."""


@dataclass(frozen=True)
class HeartbeatAnswer:
    error: ErrorCode = ErrorCode.none
    is_fenced: bool = True
    should_shut_down: bool = False


class Controller:
    def __init__(
        self,
        quorum: MetadataQuorum,
        config: BrokerConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._quorum = quorum
        self._clock = clock
        self._session = config.broker_session_timeout_ms / 1000
        self._interval = config.broker_heartbeat_interval_ms / 1000
        self._auto_rebalance = config.auto_leader_rebalance
        self._heard: dict[int, tuple[int, float]] = {}
        """node id -> (broker epoch, time of its last heartbeat)"""
        self._active = False
        self._last_sweep = clock()
        self._next_rebalance = 0.0
        self._busy: set[asyncio.Task[None]] = set()
        self._fencing: set[int] = set()
        self._seen_topics: dict[str, TopicState] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def is_active(self) -> bool:
        """This node leads the quorum and its controller runs: a stopping broker's
        controller decides nothing more, even before Raft has a new leader."""
        return not self._stopped and self._quorum.is_active_controller

    def offline_partition_count(self) -> int:
        """Partitions without a leader, as the active controller sees them (0 elsewhere,
        so a sum over brokers counts each once)."""
        return len(self._quorum.state.offline_partitions()) if self.is_active else 0

    async def start(self) -> None:
        self._seen_topics = dict(self._quorum.state.topics)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="controller")

    async def stop(self) -> None:
        self._stopped = True
        tasks = [task for task in (self._sweeper, *self._busy) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sweeper = None

    # --- heartbeats --------------------------------------------------------------------

    async def heartbeat(self, node_id: int, epoch: int, want_shut_down: bool) -> HeartbeatAnswer:
        """Kafka's BrokerHeartbeat: keep the session, unfence, or shut down in order."""
        if not self._track_activation():
            return HeartbeatAnswer(ErrorCode.not_controller)
        state = self._quorum.state
        broker = state.brokers.get(node_id)
        if broker is None:
            return HeartbeatAnswer(ErrorCode.broker_id_not_registered)
        if broker.epoch != epoch:
            return HeartbeatAnswer(ErrorCode.stale_broker_epoch)
        self._heard[node_id] = (epoch, self._clock())
        try:
            if want_shut_down:
                done = await self._quorum.submit(BeginControlledShutdown(node_id, epoch))
                if done:
                    log.info("broker may shut down", extra={"broker": node_id})
                return HeartbeatAnswer(
                    is_fenced=_fenced(self._quorum.state.brokers.get(node_id)),
                    should_shut_down=done,
                )
            if broker.fenced:
                await self._quorum.submit(UnfenceBroker(node_id, epoch))
                log.info("broker unfenced", extra={"broker": node_id, "epoch": epoch})
        except ApiError as error:
            return HeartbeatAnswer(error.code)
        return HeartbeatAnswer(is_fenced=_fenced(self._quorum.state.brokers.get(node_id)))

    def heartbeat_connection_closed(self, node_id: int, epoch: int) -> None:
        """The connection a broker heartbeated on closed: fence it unless it heartbeats
        again within one interval (on a new connection, or to a new controller)."""
        closed_at = self._clock()

        def check() -> None:
            heard = self._heard.get(node_id)
            if heard is not None and heard[0] == epoch and heard[1] > closed_at:
                return
            broker = self._quorum.state.brokers.get(node_id)
            if self.is_active and broker is not None and broker.epoch == epoch:
                self._fence(broker, "its heartbeat connection closed")

        asyncio.get_running_loop().call_later(self._interval, check)

    # --- metadata changes --------------------------------------------------------------

    def on_metadata_change(self) -> None:
        """Count leader elections (every new leader epoch) while this node is active."""
        topics = self._quorum.state.topics
        if self.is_active:
            for name, topic in topics.items():
                before = self._seen_topics.get(name)
                if before is None or before is topic:
                    continue
                elections = sum(
                    1
                    for old, new in zip(before.partitions, topic.partitions, strict=False)
                    if new.leader_epoch > old.leader_epoch
                )
                if elections:
                    metrics.LEADER_ELECTIONS.inc(elections)
        self._seen_topics = dict(topics)

    # --- the sweep ---------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                self._sweep()
            except Exception:
                log.exception("controller sweep failed")

    def _sweep(self) -> None:
        now = self._clock()
        stalled = now - self._last_sweep > self._session / 2
        self._last_sweep = now
        was_active = self._active
        if not self._track_activation():
            return
        # A stall matters only to a controller that was already active: one that just took
        # over has started every clock in _take_over (and must keep its short deadline for
        # the voters it cannot reach).
        if stalled and was_active:
            log.warning("the controller was stalled; restarting every broker's session clock")
            self._restart_clocks(now)
        for broker in list(self._quorum.state.brokers.values()):
            if broker.fenced or broker.node_id in self._fencing:
                continue
            heard = self._heard.get(broker.node_id)
            if heard is None or heard[0] != broker.epoch:
                # Registered (again) since: its session starts now.
                self._heard[broker.node_id] = (broker.epoch, now)
            elif now - heard[1] > self._session:
                self._fence(broker, "its session expired")
        if self._auto_rebalance and now >= self._next_rebalance:
            self._next_rebalance = now + REBALANCE_SECONDS
            imbalanced = self._quorum.state.preferred_leader_imbalance()
            if imbalanced:
                self._spawn(self._rebalance(imbalanced))

    def _track_activation(self) -> bool:
        """Whether this node is the active controller; on taking over, start the clocks."""
        active = self.is_active
        if active != self._active:
            self._active = active
            if active:
                self._take_over(self._clock())
            else:
                log.info("no longer the active controller")
        return active

    def _take_over(self, now: float) -> None:
        self._restart_clocks(now)
        # A voter whose Raft connection is down is most likely the controller whose death
        # brought this one in: it has one interval to show up, like a closed connection.
        for node_id in self._quorum.unreachable_voters:
            heard = self._heard.get(node_id)
            if heard is not None:
                self._heard[node_id] = (heard[0], now - self._session + self._interval)
        self._next_rebalance = now + REBALANCE_SECONDS
        log.info("became the active controller", extra={"brokers": len(self._heard)})

    def _restart_clocks(self, now: float) -> None:
        """Every broker not heard from lately gets a few heartbeat intervals from now."""
        grace = min(self._session, TAKEOVER_GRACE_INTERVALS * self._interval)
        start = now - (self._session - grace)
        heard = {}
        for broker in self._quorum.state.brokers.values():
            epoch, last = self._heard.get(broker.node_id, (broker.epoch, start))
            heard[broker.node_id] = (
                broker.epoch,
                max(last, start) if epoch == broker.epoch else start,
            )
        self._heard = heard

    def _fence(self, broker: BrokerRegistration, reason: str) -> None:
        if broker.fenced or broker.node_id in self._fencing:
            return
        self._fencing.add(broker.node_id)
        self._spawn(self._fence_broker(broker, reason))

    async def _fence_broker(self, broker: BrokerRegistration, reason: str) -> None:
        try:
            await self._quorum.submit(FenceBroker(broker.node_id, broker.epoch))
            log.warning(
                "fenced broker",
                extra={"broker": broker.node_id, "epoch": broker.epoch, "reason": reason},
            )
        except ApiError as error:
            log.warning(
                "could not fence broker", extra={"broker": broker.node_id, "error": error.message}
            )
        finally:
            self._fencing.discard(broker.node_id)

    async def _rebalance(self, partitions: list[tuple[str, int]]) -> None:
        try:
            results = await self._quorum.submit(ElectLeaders(PREFERRED, partitions))
        except ApiError as error:
            log.warning("preferred leader election failed", extra={"error": error.message})
            return
        moved = sum(1 for error in results.values() if error is None)
        if moved:
            log.info("moved leadership to preferred replicas", extra={"partitions": moved})

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._busy.add(task)
        task.add_done_callback(self._busy.discard)


def _fenced(broker: BrokerRegistration | None) -> bool:
    return broker is None or broker.fenced

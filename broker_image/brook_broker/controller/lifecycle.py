"""This broker's side of cluster membership: register, heartbeat, shut down in order.

The broker registers through the metadata quorum (a new broker epoch each time), with
its client address and the address of its internal listener, then sends BrokerHeartbeat
to the active controller's internal listener every ``--broker-heartbeat-interval-ms``.
On stop it asks for a controlled shutdown (``want_shut_down``) and keeps heartbeating
until the controller has moved its leaderships away and answers ``should_shut_down``
(bounded, so a broker without a controller still stops).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from kio.schema.errors import ErrorCode

from ..config import BrokerConfig
from ..metadata.commands import RegisterBroker
from ..metadata.errors import ApiError
from ..metadata.quorum import MetadataQuorum
from ..protocol.client import KafkaClient, KafkaConnectionError, KafkaProtocolError

log = logging.getLogger(__name__)

BROKER_HEARTBEAT = 63
HEARTBEAT_VERSION = 1
CONTROLLED_SHUTDOWN_SECONDS = 10.0
_RETRY_SECONDS = 0.05
_REREGISTER = (ErrorCode.stale_broker_epoch, ErrorCode.broker_id_not_registered)


class BrokerLifecycle:
    def __init__(
        self,
        config: BrokerConfig,
        quorum: MetadataQuorum,
        advertised: tuple[str, int],
        internal: tuple[str, int],
        connect: Callable[[str, int, str], KafkaClient] = KafkaClient,
    ) -> None:
        """``advertised``: the address given to clients; ``internal``: the internal
        listener's, given to other brokers; ``connect`` opens a connection to another
        broker's internal listener (authenticating)."""
        self._config = config
        self._quorum = quorum
        self._advertised = advertised
        self._internal = internal
        self._connect = connect
        self._interval = config.broker_heartbeat_interval_ms / 1000
        # A heartbeat waits at most this long: a stopped controller must not hold up the
        # search for its successor.
        self._request_timeout = max(2 * self._interval, 0.5)
        self.epoch = 0
        self._unfenced = asyncio.Event()
        self._released = asyncio.Event()
        self._wake = asyncio.Event()
        self._want_shut_down = False
        self._client: KafkaClient | None = None
        self._client_for: int | None = None
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Register and return once the controller has unfenced this broker."""
        await self._register()
        self._loop = asyncio.create_task(self._heartbeat_forever(), name="broker heartbeat")
        waiter = asyncio.create_task(self._unfenced.wait())
        await asyncio.wait({waiter, self._loop}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._loop.done():
            self._loop.result()

    async def stop(self) -> None:
        """Controlled shutdown: wait (bounded) until the controller lets this broker go.
        A broker that was never unfenced leads nothing and just stops heartbeating."""
        if self._loop is not None and not self._loop.done() and self._unfenced.is_set():
            self._want_shut_down = True
            self._wake.set()
            try:
                async with asyncio.timeout(CONTROLLED_SHUTDOWN_SECONDS):
                    await self._released.wait()
            except TimeoutError:
                log.warning(
                    "controlled shutdown did not finish in time; stopping anyway",
                    extra={"seconds": CONTROLLED_SHUTDOWN_SECONDS},
                )
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None
        await self._disconnect()

    async def _register(self) -> None:
        host, port = self._advertised
        node_id = self._config.node_id
        while True:
            try:
                self.epoch = await self._quorum.submit(
                    RegisterBroker(node_id, host, port, self._config.rack, *self._internal)
                )
            except ApiError as error:
                if error.code not in (ErrorCode.not_controller, ErrorCode.request_timed_out):
                    raise
                log.warning(
                    "registration not committed yet; retrying", extra={"error": error.message}
                )
                continue
            log.info("registered", extra={"epoch": self.epoch, "address": f"{host}:{port}"})
            return

    async def _heartbeat_forever(self) -> None:
        while True:
            answer = await self._heartbeat()
            delay = self._interval
            if answer is None:
                delay = _RETRY_SECONDS  # look for the (new) active controller again soon
            elif answer.error_code in _REREGISTER and not self._want_shut_down:
                log.warning(
                    "registration lost; registering again", extra={"error": answer.error_code.name}
                )
                await self._register()
                delay = 0
            elif answer.error_code == ErrorCode.none:
                if answer.should_shut_down:
                    self._released.set()
                if not answer.is_fenced:
                    self._unfenced.set()
            self._wake.clear()
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _heartbeat(self) -> Any:
        """One heartbeat to the active controller: its response, or None if there was no
        active controller to reach."""
        controller = self._quorum.active_controller_id
        brokers = self._quorum.state.brokers
        registration = brokers.get(controller) if controller is not None else None
        if registration is None:
            await self._disconnect()
            return None
        if self._client_for != controller:
            await self._disconnect()
            self._client = self._connect(
                *registration.internal_address, f"broker-{self._config.node_id}"
            )
            self._client_for = controller
        assert self._client is not None
        body = {
            "broker_id": self._config.node_id,
            "broker_epoch": self.epoch,
            "current_metadata_offset": self._quorum.applied_offset,
            "want_fence": False,
            "want_shut_down": self._want_shut_down,
        }
        started = time.monotonic()
        try:
            response = await self._client.request(
                BROKER_HEARTBEAT, HEARTBEAT_VERSION, body, timeout=self._request_timeout
            )
        except (KafkaConnectionError, KafkaProtocolError, TimeoutError) as error:
            log.debug(
                "heartbeat failed",
                extra={
                    "controller": controller,
                    "error": repr(error),
                    "seconds": round(time.monotonic() - started, 3),
                },
            )
            await self._disconnect()
            return None
        if response.error_code == ErrorCode.not_controller:
            await self._disconnect()
            return None
        return response

    async def _disconnect(self) -> None:
        client, self._client, self._client_for = self._client, None, None
        if client is not None:
            await client.close()

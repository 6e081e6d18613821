"""One broker: metadata quorum member, controller (on voters), partition logs, Kafka
listeners (clients', and the internal one for other brokers), side HTTP, maintenance.

Start order matters: the metadata must be caught up before the logs are opened (the
metadata says which partitions this broker holds), and both Kafka listeners must be
bound before the broker registers (the registration carries their addresses). Stop runs the other
way round, starting with a controlled shutdown so leaderships move before clients lose
this broker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import secrets
from collections.abc import Callable

from prometheus_client.registry import Collector

from . import allocator, metrics
from .api.context import ApiContext
from .api.dispatcher import Dispatcher
from .config import WILDCARD_HOSTS, BrokerConfig, split_host_port
from .controller.controller import Controller
from .controller.lifecycle import BrokerLifecycle
from .groups.coordinator import GroupCoordinator
from .http import HttpServer
from .metadata.quorum import MetadataQuorum
from .protocol.client import KafkaClient
from .protocol.quotas import UNLIMITED, ConnectionQuotas, ListenerLimits
from .protocol.sasl import PlainAuthenticator, PlainCredentials
from .protocol.server import KafkaServer
from .replication import ReplicaManager
from .storage.cleaner import LogCleaner, ProcessWorker
from .storage.manager import LogManager

log = logging.getLogger(__name__)

METADATA_DIRECTORY = "metadata"
"""Under the data directory; it has no ``-<partition>`` suffix, so it is never taken for a log."""


class Broker:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.kafka_address: tuple[str, int] = ("", 0)
        self.http_address: tuple[str, int] = ("", 0)
        self.ready = False
        self._http: HttpServer | None = None
        self._kafka: KafkaServer | None = None
        self._internal: KafkaServer | None = None
        self.internal_address: tuple[str, int] = ("", 0)
        self._logs: LogManager | None = None
        self._quorum: MetadataQuorum | None = None
        self._controller: Controller | None = None
        self._replicas: ReplicaManager | None = None
        self._groups: GroupCoordinator | None = None
        self._group_timers: asyncio.Task[None] | None = None
        self._lifecycle: BrokerLifecycle | None = None
        self._collectors: list[Collector] = []
        self._maintenance: asyncio.Task[None] | None = None
        self._cleaner: asyncio.Task[None] | None = None
        self._memory_trimmer: asyncio.Task[None] | None = None
        self._loop_lag: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve /healthz at once, catch up on metadata, recover the logs, take Kafka
        clients, then register and wait to be unfenced."""
        config = self.config
        self._loop_lag = asyncio.create_task(metrics.watch_event_loop_lag(), name="loop lag")
        self._http = HttpServer(lambda: self.ready)
        self.http_address = await self._http.start(*config.http_address)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self._quorum = quorum = _quorum(config, self._on_metadata_change)
        if quorum.is_voter:
            self._controller = Controller(quorum, config)
        await quorum.start()
        self._logs = logs = LogManager(config.data_dir)
        credentials = _credentials(config)
        connect = functools.partial(KafkaClient, credentials=credentials)
        self._replicas = replicas = ReplicaManager(
            config.node_id, config, logs, quorum, connect=connect
        )
        # Opens (recovering) the logs of the replicas assigned here and removes the others.
        await replicas.start()
        self._groups = groups = GroupCoordinator.for_broker(config, quorum, replicas)
        groups.on_metadata_change()
        self._group_timers = asyncio.create_task(groups.run(), name="group coordinator timers")
        context = ApiContext(config, quorum, logs, replicas, groups, self._controller)
        quotas = ConnectionQuotas(_listener_limits(config))
        self._collectors = [
            metrics.ConnectionCollector(quotas),
            metrics.PartitionCollector(logs.partitions),
            metrics.MetadataCollector(quorum),
            metrics.GroupCollector(groups.lag_snapshot),
        ]
        if self._controller is not None:
            controller = self._controller
            self._collectors.append(
                metrics.ControllerCollector(
                    lambda: controller.is_active, controller.offline_partition_count
                )
            )
            await controller.start()
        for collector in self._collectors:
            metrics.REGISTRY.register(collector)
        self._kafka = KafkaServer(Dispatcher(context), quotas.limits, quotas)
        self.kafka_address = await self._kafka.start(*config.listen_address)
        context.bound(self.kafka_address)
        # Other brokers' requests: connections counted apart from clients' (so that no
        # client flood takes the brokers' places, as Kafka protects its inter-broker
        # listener) and a request budget of their own, so that no client flood holds up
        # replication and heartbeats. Still at most max.connections of them: anyone who
        # reaches the port can connect before authenticating, and unbounded that would
        # spend the process's file descriptors.
        self._internal = KafkaServer(
            Dispatcher(context, internal=True, sasl=credentials is not None),
            dataclasses.replace(quotas.limits, max_connections_per_ip=UNLIMITED),
            authenticator=None
            if credentials is None
            else PlainAuthenticator({credentials.username: credentials.password}),
        )
        self.internal_address = await self._internal.start(*config.internal_address)
        if credentials is None:
            log.warning(
                "the internal listener takes broker-only requests from anyone who reaches it: "
                "give every broker the same --cluster-secret-file (or --cluster-secret)",
                extra={"internal": "{}:{}".format(*self.internal_address)},
            )
        self._maintenance = asyncio.create_task(
            logs.run_maintenance(config.log_retention_check_interval_ms), name="log maintenance"
        )
        self._maintenance.add_done_callback(_report_crash)
        if config.log_cleaner_enable:
            cleaner = LogCleaner(
                lambda: (partition_log for _, _, partition_log in logs.partitions()),
                worker=ProcessWorker(),
                dedupe_buffer_size=config.log_cleaner_dedupe_buffer_size,
                io_max_bytes_per_second=config.log_cleaner_io_max_bytes_per_second,
                backoff_ms=config.log_cleaner_backoff_ms,
            )
            cleaner_metrics = metrics.CleanerCollector(cleaner.stats)
            metrics.REGISTRY.register(cleaner_metrics)
            self._collectors.append(cleaner_metrics)
            self._cleaner = asyncio.create_task(cleaner.run(), name="log cleaner")
            self._cleaner.add_done_callback(_report_crash)
        self._memory_trimmer = asyncio.create_task(
            allocator.return_free_memory(), name="free memory trimmer"
        )
        self._lifecycle = BrokerLifecycle(
            config,
            quorum,
            context.advertised_address,
            _internal_advertised(config, self.internal_address, context.advertised_address),
            connect,
        )
        await self._lifecycle.start()
        self.ready = True
        host, port = context.advertised_address
        log.info("broker ready", extra={"advertised": f"{host}:{port}"})

    async def stop(self) -> None:
        """Hand leaderships over, stop taking requests, leave the quorum, then flush and
        close every log. Safe after a failed start."""
        self.ready = False
        if self._lifecycle is not None:
            await self._lifecycle.stop()
            self._lifecycle = None
        if self._controller is not None:
            await self._controller.stop()
        if self._kafka is not None:
            await self._kafka.stop()
            self._kafka = None
        if self._internal is not None:
            await self._internal.stop()
            self._internal = None
        if self._group_timers is not None:
            self._group_timers.cancel()
            await asyncio.gather(self._group_timers, return_exceptions=True)
            self._group_timers = None
        if self._groups is not None:
            await self._groups.stop()
            self._groups = None
        if self._replicas is not None:
            await self._replicas.stop()
            self._replicas = None
        if self._quorum is not None:
            await self._quorum.stop()
            self._quorum = None
        for task in (self._maintenance, self._cleaner, self._memory_trimmer, self._loop_lag):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._maintenance = self._cleaner = self._memory_trimmer = self._loop_lag = None
        for collector in self._collectors:
            metrics.REGISTRY.unregister(collector)
        self._collectors = []
        if self._logs is not None:
            self._logs.close()
            self._logs = None
        if self._http is not None:
            await self._http.stop()
            self._http = None

    def _on_metadata_change(self) -> None:
        """Called by the quorum after every applied change (on the event loop)."""
        if self._controller is not None:
            self._controller.on_metadata_change()
        if self._replicas is not None:
            self._replicas.on_metadata_change()
        if self._groups is not None:
            self._groups.on_metadata_change()


def _quorum(config: BrokerConfig, on_change: Callable[[], None]) -> MetadataQuorum:
    """This broker's member of the metadata quorum: a voter if ``--controller-quorum``
    names it, an observer if it names others, and without it a quorum of one."""
    directory = config.data_dir / METADATA_DIRECTORY
    voters = config.voters
    if not voters:
        name = f"broker-{config.node_id}:0"
        return MetadataQuorum(
            config.node_id, {config.node_id: name}, name, directory, on_change, lone=True
        )
    return MetadataQuorum(
        config.node_id,
        voters,
        voters.get(config.node_id),
        directory,
        on_change,
        listen=config.controller_listen,
        password=config.cluster_secret,
    )


def _listener_limits(config: BrokerConfig) -> ListenerLimits:
    return ListenerLimits(
        socket_request_max_bytes=config.socket_request_max_bytes,
        socket_request_timeout_ms=config.socket_request_timeout_ms,
        connections_max_idle_ms=config.connections_max_idle_ms,
        queued_max_request_bytes=config.queued_max_request_bytes,
        max_connections=config.max_connections,
        max_connections_per_ip=config.max_connections_per_ip,
    )


BROKER_USERNAME = "broker"
"""The one user of the internal listener: every broker, proving it knows the cluster secret."""


def _credentials(config: BrokerConfig) -> PlainCredentials | None:
    """How brokers authenticate to each other's internal listener. A quorum of one has no
    peers to share a secret with: it makes up its own, so its listener is never open."""
    secret = config.cluster_secret
    if secret is None and not config.voters:
        secret = secrets.token_urlsafe(32)
    return None if secret is None else PlainCredentials(BROKER_USERNAME, secret)


def _internal_advertised(
    config: BrokerConfig, bound: tuple[str, int], client_advertised: tuple[str, int]
) -> tuple[str, int]:
    """The internal address other brokers are given: ``--internal-advertised-listener``,
    else the bound one, with the host clients are given in place of a wildcard."""
    if config.internal_advertised_listener:
        return split_host_port(config.internal_advertised_listener)
    host, port = bound
    return (client_advertised[0] if host in WILDCARD_HOSTS else host), port


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped", task.get_name(), exc_info=task.exception())

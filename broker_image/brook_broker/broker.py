"""One broker: topic registry, partition logs, Kafka listener, side HTTP, maintenance."""

from __future__ import annotations

import asyncio
import logging

from . import metrics
from .api.context import ApiContext
from .api.dispatcher import Dispatcher
from .config import BrokerConfig
from .http import HttpServer
from .metadata.topics import TopicRegistry
from .protocol.server import KafkaServer
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
        self._logs: LogManager | None = None
        self._collector: metrics.PartitionCollector | None = None
        self._maintenance: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve /healthz at once, recover the logs, then take Kafka clients."""
        config = self.config
        self._http = HttpServer(lambda: self.ready)
        self.http_address = await self._http.start(*config.http_address)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        topics = TopicRegistry(config.data_dir / METADATA_DIRECTORY)
        self._logs = logs = LogManager(config.data_dir)
        context = ApiContext(config, topics, logs)
        # Recovery reads the tails of segments: keep the event loop (and /healthz) free.
        await asyncio.to_thread(logs.open_existing, context.log_config_for)
        await asyncio.to_thread(context.open_missing_logs)
        self._collector = metrics.PartitionCollector(logs.partitions)
        metrics.REGISTRY.register(self._collector)
        self._kafka = KafkaServer(Dispatcher(context), config.socket_request_max_bytes)
        self.kafka_address = await self._kafka.start(*config.listen_address)
        context.bound(self.kafka_address)
        self._maintenance = asyncio.create_task(
            logs.run_maintenance(config.log_retention_check_interval_ms), name="log maintenance"
        )
        self._maintenance.add_done_callback(_report_crash)
        self.ready = True
        host, port = context.advertised_address
        log.info("broker ready", extra={"advertised": f"{host}:{port}"})

    async def stop(self) -> None:
        """Stop taking requests, then flush and close every log. Safe after a failed start."""
        self.ready = False
        if self._kafka is not None:
            await self._kafka.stop()
            self._kafka = None
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
            self._maintenance = None
        if self._collector is not None:
            metrics.REGISTRY.unregister(self._collector)
            self._collector = None
        if self._logs is not None:
            self._logs.close()
            self._logs = None
        if self._http is not None:
            await self._http.stop()
            self._http = None


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("log maintenance stopped", exc_info=task.exception())

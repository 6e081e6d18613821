"""What request handlers act on: the broker's settings, its topic registry and partition logs.

Changes that touch both the registry and the logs (creating, deleting, growing a topic,
changing its configs) are done here, once, in the order that a crash between the two
steps can be repaired on the next start: the registry first, then the logs. On start,
logs of topics the registry no longer has are removed and missing logs are created.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable, Mapping

from kio.schema.errors import ErrorCode

from ..config import BrokerConfig
from ..metadata.errors import ApiError
from ..metadata.topic_config import TopicSettings, resolve
from ..metadata.topics import Topic, TopicRegistry
from ..storage.log import LogConfig
from ..storage.manager import LogManager

LIVE_BROKERS = 1
"""A single broker until replication arrives: replication factors above this are refused."""


class AppendNotifier:
    """Wakes fetches waiting for data (``min_bytes`` not reached) when a partition grows.

    A waiting fetch registers one event under each partition it reads; an append sets
    the events registered under its partition. Nothing polls.
    """

    def __init__(self) -> None:
        self._waiters: dict[tuple[str, int], set[asyncio.Event]] = {}

    def notify(self, topic: str, partition: int) -> None:
        waiters = self._waiters.pop((topic, partition), None)
        if waiters:
            for event in waiters:
                event.set()

    async def wait(self, partitions: Iterable[tuple[str, int]], timeout: float) -> None:
        """Return after an append to one of ``partitions``, or after ``timeout`` seconds."""
        event = asyncio.Event()
        keys = list(partitions)
        for key in keys:
            self._waiters.setdefault(key, set()).add(event)
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            for key in keys:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(event)
                    if not waiters:
                        del self._waiters[key]


class ApiContext:
    """Shared by all handlers of one broker; the only place topics change."""

    def __init__(self, config: BrokerConfig, topics: TopicRegistry, logs: LogManager) -> None:
        self.config = config
        self.topics = topics
        self.logs = logs
        self.appends = AppendNotifier()
        self.advertised_address: tuple[str, int] = config.advertised_address
        self._settings: dict[str, tuple[Topic, TopicSettings]] = {}

    def bound(self, kafka_address: tuple[str, int]) -> None:
        """The listener is bound: advertise its port unless an advertised listener was set,
        and a name clients can reach instead of a wildcard address."""
        if self.config.advertised_listener:
            return
        host, port = kafka_address
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        self.advertised_address = (host, port)

    # --- reads -------------------------------------------------------------------------

    def settings(self, topic: Topic) -> TopicSettings:
        """The topic's effective settings, resolved once per change of its overrides."""
        cached = self._settings.get(topic.name)
        if cached is not None and cached[0] is topic:
            return cached[1]
        settings = resolve(topic.configs, self.config)
        self._settings[topic.name] = (topic, settings)
        return settings

    def log_config_for(self, topic_name: str, partition: int) -> LogConfig | None:
        """For opening logs on start: None for a partition the registry does not know."""
        topic = self.topics.get(topic_name)
        if topic is None or not 0 <= partition < topic.partitions:
            return None
        return self.settings(topic).log

    # --- changes -----------------------------------------------------------------------

    def open_missing_logs(self) -> None:
        for topic in self.topics.list_topics():
            self._create_logs(topic, 0)

    def create_topic(
        self,
        name: str,
        partitions: int,
        replication_factor: int,
        configs: Iterable[tuple[str, str | None]] = (),
        *,
        validate_only: bool = False,
    ) -> Topic:
        if replication_factor > LIVE_BROKERS:
            raise ApiError(
                ErrorCode.invalid_replication_factor,
                f"Replication factor: {replication_factor} larger than available brokers: "
                f"{LIVE_BROKERS}.",
            )
        topic = self.topics.create_topic(
            name, partitions, replication_factor, configs, validate_only=validate_only
        )
        if not validate_only:
            self._create_logs(topic, 0)
        return topic

    def delete_topic(self, name: str) -> Topic:
        topic = self.topics.delete_topic(name)
        self._settings.pop(name, None)
        self.logs.delete_topic(name)
        return topic

    def add_partitions(self, name: str, total: int, *, validate_only: bool = False) -> Topic:
        before = self.topics.get(name)
        topic = self.topics.add_partitions(name, total, validate_only=validate_only)
        if not validate_only and before is not None:
            self._create_logs(topic, before.partitions)
        return topic

    def alter_configs(
        self, name: str, configs: Mapping[str, str], *, validate_only: bool = False
    ) -> Topic:
        topic = self.topics.alter_configs(name, configs, validate_only=validate_only)
        if not validate_only:
            log_config = self.settings(topic).log
            for partition in range(topic.partitions):
                partition_log = self.logs.get(name, partition)
                if partition_log is not None:
                    partition_log.update_config(log_config)
        return topic

    def _create_logs(self, topic: Topic, first_partition: int) -> None:
        log_config = self.settings(topic).log
        for partition in range(first_partition, topic.partitions):
            if self.logs.get(topic.name, partition) is None:
                self.logs.create(topic.name, partition, log_config)

"""What request handlers act on: the broker's settings, the replicated cluster metadata,
and this broker's partition logs.

Topics live in the metadata quorum. Admin changes (create, delete, grow, configs,
producer id blocks) are commands submitted through the local quorum member, which
forwards them to the active controller; they return once the change is applied on this
broker, so a client that created a topic here finds it here. The partition logs follow
the metadata, not the requests: the replica manager creates and deletes them as changes
are applied.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence

from kio.schema.errors import ErrorCode

from ..config import WILDCARD_HOSTS, BrokerConfig
from ..controller.controller import Controller
from ..groups.coordinator import GroupCoordinator
from ..metadata.cluster_state import ClusterState
from ..metadata.commands import (
    AllocateProducerIds,
    AlterTopicConfigs,
    CreatePartitions,
    CreateTopic,
    DeleteTopic,
)
from ..metadata.errors import ApiError
from ..metadata.model import TopicState
from ..metadata.quorum import MetadataQuorum
from ..metadata.topic_config import TopicSettings, resolve, validate_overrides
from ..metadata.topics import PartitionLimits
from ..replication import ReplicaManager
from ..storage.manager import LogManager

PRODUCER_ID_BLOCK = 1000
"""Producer ids are taken from the quorum this many at a time, so most InitProducerId
requests commit nothing."""


class TopicsView:
    """The topics of the replicated metadata, read as handlers need them."""

    def __init__(self, quorum: MetadataQuorum) -> None:
        self._quorum = quorum

    def get(self, name: str) -> TopicState | None:
        return self._quorum.state.topics.get(name)

    def get_by_id(self, topic_id: uuid.UUID) -> TopicState | None:
        return self._quorum.state.topic_by_id(topic_id)

    def list_topics(self) -> list[TopicState]:
        return sorted(self._quorum.state.topics.values(), key=lambda topic: topic.name)


class ApiContext:
    """Shared by all handlers of one broker."""

    def __init__(
        self,
        config: BrokerConfig,
        quorum: MetadataQuorum,
        logs: LogManager,
        replicas: ReplicaManager,
        groups: GroupCoordinator,
        controller: Controller | None = None,
    ) -> None:
        self.config = config
        self.quorum = quorum
        self.topics = TopicsView(quorum)
        self.logs = logs
        self.replicas = replicas
        """The front door of appends and fetches, and this broker's replicas."""
        self.groups = groups
        self.controller = controller
        """The controller's duties, on voters; None on observers."""
        self.advertised_address: tuple[str, int] = config.advertised_address
        self.partition_limits = PartitionLimits(
            per_request=config.max_partitions_per_request,
            per_topic=config.max_partitions_per_topic,
            per_broker=config.max_broker_partitions,
            per_cluster=config.max_partitions,
        )
        """Checked before a command that adds partitions is proposed, and carried in it."""
        self._settings: dict[str, tuple[Mapping[str, str], TopicSettings]] = {}
        self._next_producer_id = 0
        self._producer_id_limit = 0

    def bound(self, kafka_address: tuple[str, int]) -> None:
        """The listener is bound: advertise its port unless an advertised listener was set,
        and a name clients can reach instead of a wildcard address."""
        if self.config.advertised_listener:
            return
        host, port = kafka_address
        if host in WILDCARD_HOSTS:
            host = socket.getfqdn()
        self.advertised_address = (host, port)

    # --- reads -------------------------------------------------------------------------

    def settings(self, topic: TopicState) -> TopicSettings:
        """The topic's effective settings, resolved once per change of its overrides."""
        cached = self._settings.get(topic.name)
        if cached is not None and cached[0] is topic.configs:
            return cached[1]
        settings = resolve(topic.configs, self.config)
        self._settings[topic.name] = (topic.configs, settings)
        return settings

    # --- changes -----------------------------------------------------------------------

    async def create_topic(
        self,
        name: str,
        partitions: int,
        replication_factor: int,
        configs: Iterable[tuple[str, str | None]] = (),
        *,
        assignments: Sequence[Sequence[int]] | None = None,
        validate_only: bool = False,
    ) -> TopicState:
        command = CreateTopic(
            name,
            self._new_topic_id(),
            partitions,
            replication_factor,
            validate_overrides(configs),
            None if assignments is None else [tuple(replicas) for replicas in assignments],
            self.partition_limits,
        )
        trial = self._trial().apply(command)
        if validate_only:
            return trial
        return await self.quorum.submit(command)

    async def delete_topic(self, name: str) -> TopicState:
        topic = self.topics.get(name)
        if topic is None:
            raise ApiError(
                ErrorCode.unknown_topic_or_partition,
                f"This server does not host this topic: {name}",
            )
        await self.quorum.submit(DeleteTopic(name))
        self._settings.pop(name, None)
        return topic

    async def add_partitions(
        self,
        name: str,
        total: int,
        assignments: Sequence[Sequence[int]] | None = None,
        *,
        validate_only: bool = False,
    ) -> TopicState:
        command = CreatePartitions(
            name,
            total,
            None if assignments is None else [tuple(replicas) for replicas in assignments],
            self.partition_limits,
        )
        trial = self._trial().apply(command)
        if validate_only:
            return trial
        return await self.quorum.submit(command)

    async def alter_configs(
        self, name: str, configs: Mapping[str, str], *, validate_only: bool = False
    ) -> TopicState:
        """Replace a topic's config overrides with ``configs``."""
        command = AlterTopicConfigs(name, validate_overrides(configs.items()))
        if validate_only:
            return self._trial().apply(command)
        return await self.quorum.submit(command)

    async def allocate_producer_id(self) -> int:
        """A producer id never handed out before, by any broker, not even before a restart."""
        while self._next_producer_id >= self._producer_id_limit:
            first = await self.quorum.submit(AllocateProducerIds(PRODUCER_ID_BLOCK))
            if self._next_producer_id >= self._producer_id_limit:
                self._next_producer_id, self._producer_id_limit = first, first + PRODUCER_ID_BLOCK
        producer_id = self._next_producer_id
        self._next_producer_id += 1
        return producer_id

    def _trial(self) -> ClusterState:
        """A private copy of the state: a command that adds partitions runs on it first,
        so one the quorum would refuse is refused here, before it is proposed, and a
        validate-only request is checked exactly as the real one would be."""
        return self.quorum.state.copy()

    def _new_topic_id(self) -> uuid.UUID:
        """A random id; Kafka reserves the zero id (no topic) and 1 (its metadata topic)."""
        while True:
            topic_id = uuid.uuid4()
            if topic_id.int > 1 and self.topics.get_by_id(topic_id) is None:
                return topic_id

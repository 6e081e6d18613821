"""Admin requests about the cluster and its topics, as any Kafka admin tool sends them:
describe the cluster, topics, configs, reassignments and log dirs; create and delete
topics, add partitions, alter configs, reassign partitions, elect preferred leaders.

Requests go to whichever broker answers (every broker hands admin requests to the active
controller). While the controller moves (NOT_CONTROLLER, REQUEST_TIMED_OUT) a request is
sent again, for at most ``retry_timeout`` seconds; every other failure is raised at once
as :class:`KafkaAdminError` with Kafka's error code and message.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from brook_broker.metadata.topic_config import ConfigSource
from brook_broker.protocol.client import KafkaConnectionError
from kio.schema.errors import ErrorCode

from .session import (
    Api,
    ClusterSession,
    Failure,
    KafkaAdminError,
    KafkaRequestError,
)

_CREATE_TOPICS = Api(19, 2, 7)
_DELETE_TOPICS = Api(20, 1, 6)
_DESCRIBE_CONFIGS = Api(32, 1, 4)
_DESCRIBE_LOG_DIRS = Api(35, 1, 4)
_CREATE_PARTITIONS = Api(37, 0, 3)
_ELECT_LEADERS = Api(43, 1, 2)
_INCREMENTAL_ALTER_CONFIGS = Api(44, 0, 1)
_ALTER_PARTITION_REASSIGNMENTS = Api(45, 0, 0)
_LIST_PARTITION_REASSIGNMENTS = Api(46, 0, 0)
_DESCRIBE_CLUSTER = Api(60, 0, 1)

_TOPIC_RESOURCE = 2
_SET, _DELETE = 0, 1
_PREFERRED = 0


@dataclass(frozen=True, order=True)
class BrokerDescription:
    node_id: int
    host: str
    port: int
    rack: str | None


@dataclass(frozen=True)
class ClusterDescription:
    """The live brokers and the active controller (None while there is none)."""

    cluster_id: str
    controller: int | None
    brokers: tuple[BrokerDescription, ...]


@dataclass(frozen=True)
class PartitionDescription:
    partition: int
    leader: int | None
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    offline_replicas: tuple[int, ...] = ()

    @property
    def under_replicated(self) -> bool:
        return len(self.isr) < len(self.replicas)


@dataclass(frozen=True)
class TopicDescription:
    name: str
    topic_id: str
    partitions: tuple[PartitionDescription, ...]


@dataclass(frozen=True)
class ConfigValue:
    """One topic config as DescribeConfigs reports it; ``override`` when it is set on the
    topic itself rather than taken from the broker's default."""

    value: str | None
    override: bool
    read_only: bool = False


@dataclass(frozen=True)
class Reassignment:
    """A partition reassignment in progress: the replicas now (target first) and the
    replicas being added and removed."""

    topic: str
    partition: int
    replicas: tuple[int, ...]
    adding: tuple[int, ...]
    removing: tuple[int, ...]


class ClusterAdmin(ClusterSession):
    """The cluster and topic requests of :class:`brook_client.admin.KafkaAdmin`."""

    # -- reading

    async def describe_cluster(self) -> ClusterDescription:
        body = {"include_cluster_authorized_operations": False, "endpoint_type": 1}
        response = await self._ask(
            _DESCRIBE_CLUSTER,
            body,
            lambda response: [("the cluster", response.error_code, response.error_message)],
        )
        return ClusterDescription(
            cluster_id=str(response.cluster_id),
            controller=None if response.controller_id < 0 else int(response.controller_id),
            brokers=tuple(
                sorted(
                    BrokerDescription(int(b.broker_id), str(b.host), int(b.port), b.rack)
                    for b in response.brokers
                )
            ),
        )

    async def describe_topics(
        self, names: Iterable[str] | None = None
    ) -> dict[str, TopicDescription | None]:
        """Each topic's partitions with leader, replicas and ISR; None for a topic that
        does not exist. Every topic of the cluster when ``names`` is None."""
        wanted = None if names is None else list(dict.fromkeys(names))
        response = await self._cluster.metadata(wanted)
        found: dict[str, TopicDescription | None] = dict.fromkeys(wanted or ())
        for topic in response.topics:
            code = int(topic.error_code)
            if code == ErrorCode.unknown_topic_or_partition:
                continue
            if code not in (ErrorCode.none, ErrorCode.leader_not_available):
                raise KafkaAdminError("Metadata", f"topic {topic.name!r}", code, None)
            found[str(topic.name)] = TopicDescription(
                name=str(topic.name),
                topic_id=str(getattr(topic, "topic_id", "")),
                partitions=tuple(
                    sorted(
                        (_partition(partition) for partition in topic.partitions),
                        key=lambda p: p.partition,
                    )
                ),
            )
        return found

    async def describe_topic(self, name: str) -> TopicDescription | None:
        return (await self.describe_topics([name]))[name]

    async def describe_configs(
        self, topics: Sequence[str], keys: Sequence[str] | None = None
    ) -> dict[str, dict[str, ConfigValue]]:
        """The configs of each topic (those named by ``keys``, or every one), in one
        request; topics that do not exist (deleted meanwhile) are left out."""
        if not topics:
            return {}
        body = {
            "resources": [
                {
                    "resource_type": _TOPIC_RESOURCE,
                    "resource_name": name,
                    "configuration_keys": None if keys is None else list(keys),
                }
                for name in topics
            ],
            "include_synonyms": False,
            "include_documentation": False,
        }

        def failures(response: Any) -> Iterator[Failure]:
            for failure in _failures(response.results, "resource_name"):
                if failure[1] != ErrorCode.unknown_topic_or_partition:
                    yield failure

        response = await self._ask(_DESCRIBE_CONFIGS, body, failures)
        return {
            str(result.resource_name): {
                str(entry.name): ConfigValue(
                    value=entry.value,
                    override=entry.config_source == ConfigSource.DYNAMIC_TOPIC_CONFIG,
                    read_only=bool(entry.read_only),
                )
                for entry in result.configs
            }
            for result in response.results
            if result.error_code == ErrorCode.none
        }

    async def describe_topic_configs(self, name: str) -> dict[str, ConfigValue]:
        """Every config of the topic, with its effective value."""
        found = await self.describe_configs([name])
        if name not in found:
            raise KafkaAdminError(
                "DescribeConfigs", f"topic {name!r}", ErrorCode.unknown_topic_or_partition, None
            )
        return found[name]

    async def list_partition_reassignments(
        self, topics: Iterable[str] | None = None
    ) -> dict[tuple[str, int], Reassignment]:
        """Reassignments in progress, of every topic (None) or of the topics named."""
        wanted = None if topics is None else set(topics)
        body = {"timeout": self._timeout_ms, "topics": None}
        response = await self._ask(
            _LIST_PARTITION_REASSIGNMENTS,
            body,
            lambda response: [("reassignments", response.error_code, response.error_message)],
        )
        return {
            (str(topic.name), int(p.partition_index)): Reassignment(
                topic=str(topic.name),
                partition=int(p.partition_index),
                replicas=_nodes(p.replicas),
                adding=_nodes(p.adding_replicas),
                removing=_nodes(p.removing_replicas),
            )
            for topic in response.topics
            if wanted is None or topic.name in wanted
            for p in topic.partitions
        }

    async def log_bytes(self, brokers: Sequence[BrokerDescription]) -> int | None:
        """The size of all partition replicas on ``brokers``: DescribeLogDirs to each,
        which answers for itself; None as soon as one does not answer."""
        total = 0
        for broker in brokers:
            try:
                _, response = await self._cluster.request(
                    (broker.host, broker.port), _DESCRIBE_LOG_DIRS, {"topics": None}
                )
            except (KafkaConnectionError, KafkaRequestError, TimeoutError):
                return None
            total += sum(
                partition.partition_size
                for result in response.results
                for topic in result.topics
                for partition in topic.partitions
            )
        return total

    # -- changing

    async def create_topic(
        self,
        name: str,
        partitions: int,
        replication_factor: int,
        configs: Mapping[str, str] | None = None,
    ) -> str | None:
        """Create the topic; returns its topic id (None from brokers too old to say)."""
        body = {
            "topics": [
                {
                    "name": name,
                    "num_partitions": partitions,
                    "replication_factor": replication_factor,
                    "assignments": [],
                    "configs": [{"name": k, "value": v} for k, v in (configs or {}).items()],
                }
            ],
            "timeout": self._timeout_ms,
            "validate_only": False,
        }
        response = await self._ask(
            _CREATE_TOPICS, body, lambda response: _failures(response.topics, "name")
        )
        topic_id = getattr(response.topics[0], "topic_id", None)
        return None if topic_id is None else str(topic_id)

    async def create_partitions(self, name: str, count: int) -> None:
        """Grow the topic to ``count`` partitions in all (placed by the controller)."""
        body = {
            "topics": [{"name": name, "count": count, "assignments": None}],
            "timeout": self._timeout_ms,
            "validate_only": False,
        }
        await self._ask(
            _CREATE_PARTITIONS, body, lambda response: _failures(response.results, "name")
        )

    async def alter_topic_configs(
        self, name: str, set_configs: Mapping[str, str], delete_configs: Iterable[str] = ()
    ) -> None:
        """Set some configs and delete others (back to the broker's default), at once."""
        operations = [
            {"name": key, "config_operation": _SET, "value": value}
            for key, value in set_configs.items()
        ] + [{"name": key, "config_operation": _DELETE, "value": None} for key in delete_configs]
        body = {
            "resources": [
                {"resource_type": _TOPIC_RESOURCE, "resource_name": name, "configs": operations}
            ],
            "validate_only": False,
        }
        await self._ask(
            _INCREMENTAL_ALTER_CONFIGS,
            body,
            lambda response: _failures(response.responses, "resource_name"),
        )

    async def alter_partition_reassignments(
        self, name: str, targets: Mapping[int, Sequence[int] | None]
    ) -> None:
        """Move each partition to its target replicas (None cancels its reassignment)."""
        body = {
            "timeout": self._timeout_ms,
            "topics": [
                {
                    "name": name,
                    "partitions": [
                        {
                            "partition_index": partition,
                            "replicas": None if replicas is None else list(replicas),
                        }
                        for partition, replicas in sorted(targets.items())
                    ],
                }
            ],
        }

        def failures(response: Any) -> list[Failure]:
            found: list[Failure] = [("reassignments", response.error_code, response.error_message)]
            for topic in response.responses:
                for p in topic.partitions:
                    subject = f"partition {topic.name}-{p.partition_index}"
                    found.append((subject, p.error_code, p.error_message))
            return found

        await self._ask(_ALTER_PARTITION_REASSIGNMENTS, body, failures)

    async def elect_preferred_leaders(self) -> None:
        """Give every partition's leadership to its first replica where it is in sync
        (a partition already led by it needs no election)."""
        body = {"election_type": _PREFERRED, "topic_partitions": None, "timeout": self._timeout_ms}

        def failures(response: Any) -> list[Failure]:
            found: list[Failure] = [("the election", getattr(response, "error_code", 0), None)]
            for topic in response.replica_election_results:
                for result in topic.partition_result:
                    if result.error_code != ErrorCode.election_not_needed:
                        subject = f"partition {topic.topic}-{result.partition_id}"
                        found.append((subject, result.error_code, result.error_message))
            return found

        await self._ask(_ELECT_LEADERS, body, failures)

    async def delete_topic(self, name: str) -> None:
        body = {
            "topics": [{"name": name}],
            "topic_names": [name],
            "timeout": self._timeout_ms,
        }
        await self._ask(
            _DELETE_TOPICS, body, lambda response: _failures(response.responses, "name")
        )


def _partition(partition: Any) -> PartitionDescription:
    leader = int(partition.leader_id)
    return PartitionDescription(
        partition=int(partition.partition_index),
        leader=None if leader < 0 else leader,
        replicas=_nodes(partition.replica_nodes),
        isr=_nodes(partition.isr_nodes),
        offline_replicas=_nodes(getattr(partition, "offline_replicas", ())),
    )


def _nodes(nodes: Iterable[Any]) -> tuple[int, ...]:
    return tuple(int(node) for node in nodes)


def _failures(results: Iterable[Any], name_field: str) -> Iterator[Failure]:
    """The failure of each per-topic result (error message where the version has one)."""
    for result in results:
        subject = f"topic {getattr(result, name_field)!r}"
        yield subject, result.error_code, getattr(result, "error_message", None)

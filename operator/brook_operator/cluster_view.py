"""What a Broker's status reports about its cluster, read over the Kafka protocol from
the client Service: the live brokers, the active controller, and every partition's
leader, replicas and ISR with its topic's ``min.insync.replicas``.

The reads build on the admin client of :mod:`brook_operator.kafka_admin`; the two reads
only the Broker status needs (every topic at once, one config of many topics in one
DescribeConfigs) are added here, with the preferred leader election that ends a scale-out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from brook_broker.protocol.client import KafkaConnectionError
from brook_broker.protocol.cluster_client import Api, KafkaRequestError

from .kafka_admin import BrokerDescription, KafkaAdmin

_DESCRIBE_CONFIGS = Api(32, 1, 4)
_DESCRIBE_LOG_DIRS = Api(35, 1, 4)
_ELECT_LEADERS = Api(43, 1, 2)
_PREFERRED = 0
_ELECTION_NOT_NEEDED = 84
_TOPIC_RESOURCE = 2
MIN_INSYNC_REPLICAS = "min.insync.replicas"


@dataclass(frozen=True)
class PartitionView:
    topic: str
    partition: int
    leader: int | None
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    min_insync_replicas: int


@dataclass(frozen=True)
class ClusterView:
    brokers: tuple[int, ...]
    """Node ids of the brokers registered with the active controller."""
    controller: int | None
    partitions: tuple[PartitionView, ...]
    racks: Mapping[int, str | None] = field(default_factory=dict)
    log_bytes: int | None = None
    """Bytes of every partition replica on every broker; None when a broker did not say."""


class ClusterReader(KafkaAdmin):
    async def view(self) -> ClusterView:
        cluster = await self.describe_cluster()
        names = [str(topic.name) for topic in (await self._cluster.metadata(None)).topics]
        topics = await self.describe_topics(names)
        present = [name for name, topic in topics.items() if topic is not None]
        min_isr = await self.min_insync_replicas(present)
        return ClusterView(
            brokers=tuple(broker.node_id for broker in cluster.brokers),
            controller=cluster.controller,
            partitions=tuple(
                PartitionView(
                    topic=name,
                    partition=partition.partition,
                    leader=partition.leader,
                    replicas=partition.replicas,
                    isr=partition.isr,
                    min_insync_replicas=min_isr.get(name, 1),
                )
                for name, topic in sorted(topics.items())
                if topic is not None
                for partition in topic.partitions
            ),
            racks={broker.node_id: broker.rack for broker in cluster.brokers},
            log_bytes=await self.log_bytes(cluster.brokers),
        )

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

    async def elect_preferred_leaders(self) -> None:
        """Give every partition's leadership to its first replica where it is in sync
        (a partition already led by it needs no election)."""
        body = {"election_type": _PREFERRED, "topic_partitions": None, "timeout": self._timeout_ms}

        def failures(response: Any) -> list[tuple[str, int, str | None]]:
            found = [("the election", getattr(response, "error_code", 0), None)]
            for topic in response.replica_election_results:
                for result in topic.partition_result:
                    if result.error_code != _ELECTION_NOT_NEEDED:
                        subject = f"partition {topic.topic}-{result.partition_id}"
                        found.append((subject, result.error_code, result.error_message))
            return found

        await self._ask(_ELECT_LEADERS, body, failures)

    async def min_insync_replicas(self, topics: Sequence[str]) -> dict[str, int]:
        """Each topic's effective min.insync.replicas, in one request; topics deleted
        meanwhile are left out."""
        if not topics:
            return {}
        body = {
            "resources": [
                {
                    "resource_type": _TOPIC_RESOURCE,
                    "resource_name": name,
                    "configuration_keys": [MIN_INSYNC_REPLICAS],
                }
                for name in topics
            ],
            "include_synonyms": False,
            "include_documentation": False,
        }
        response = await self._ask(_DESCRIBE_CONFIGS, body, lambda response: ())
        return {
            str(result.resource_name): value
            for result in response.results
            if result.error_code == 0
            for value in _min_isr(result.configs)
        }


def _min_isr(configs: Any) -> list[int]:
    return [
        int(entry.value)
        for entry in configs
        if entry.name == MIN_INSYNC_REPLICAS and entry.value is not None
    ]


async def read_cluster(bootstrap: str, *, timeout: float = 5.0) -> ClusterView:
    """One view of the cluster; raises KafkaRequestError when no broker answers."""
    reader = ClusterReader(bootstrap, request_timeout=timeout, retry_timeout=timeout)
    try:
        return await reader.view()
    finally:
        await reader.close()

"""What a Broker's status reports about its cluster, read over the Kafka protocol from
the client Service: the live brokers, the active controller, and every partition's
leader, replicas and ISR with its topic's ``min.insync.replicas``.

The reads are the shared admin client's (:class:`brook_client.admin.KafkaAdmin`); this
module only puts them together into the view the Broker status and scaling decide on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from brook_client.admin import KafkaAdmin
from brook_client.cluster_admin import ConfigValue

from .topic_plan import MIN_INSYNC_REPLICAS


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
    """The admin client of a Broker's controller, with the read of its whole view."""

    async def view(self) -> ClusterView:
        cluster = await self.describe_cluster()
        topics = {name: topic for name, topic in (await self.describe_topics()).items() if topic}
        configs = await self.describe_configs(sorted(topics), [MIN_INSYNC_REPLICAS])
        min_isr = {
            name: int(value)
            for name, found in configs.items()
            if (value := _value(found, MIN_INSYNC_REPLICAS)) is not None
        }
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
                for partition in topic.partitions
            ),
            racks={broker.node_id: broker.rack for broker in cluster.brokers},
            log_bytes=await self.log_bytes(cluster.brokers),
        )


def _value(configs: Mapping[str, ConfigValue], name: str) -> str | None:
    config = configs.get(name)
    return None if config is None else config.value

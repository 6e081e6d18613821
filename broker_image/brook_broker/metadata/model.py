"""The cluster metadata the Raft quorum replicates: brokers, topics, partitions.

Values are immutable: a change replaces the object, so readers on the event loop always
see a consistent partition or topic, and can keep a reference without copying.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

NO_LEADER = -1


@dataclass(frozen=True)
class BrokerRegistration:
    node_id: int
    host: str
    port: int
    rack: str | None
    epoch: int
    """Raised on every registration, so requests from an earlier life of the broker are
    recognised and refused."""
    fenced: bool = False
    """A fenced broker missed its session (or is shutting down): it leads nothing, is in
    no ISR it could be removed from, and is not given to clients."""
    shutting_down: bool = False
    internal_host: str = ""
    internal_port: int = 0
    """Where other brokers send it their requests (its internal listener); never given
    to clients."""

    @property
    def internal_address(self) -> tuple[str, int]:
        """The internal listener's address; a registration without one (written before
        brokers had internal listeners) is reached at its client address."""
        if self.internal_port:
            return self.internal_host, self.internal_port
        return self.host, self.port


@dataclass(frozen=True)
class PartitionState:
    replicas: tuple[int, ...]
    """Assigned replicas, preferred leader first (during a reassignment: old and new)."""
    isr: tuple[int, ...]
    leader: int
    leader_epoch: int
    """Raised on every change of leader: fences the old leader and marks log divergence."""
    partition_epoch: int
    """Raised on every change of this state: ISR proposals name the epoch they start from."""
    adding: tuple[int, ...] = ()
    removing: tuple[int, ...] = ()

    @property
    def target_replicas(self) -> tuple[int, ...]:
        """The replicas once the reassignment in progress (if any) completes."""
        return tuple(replica for replica in self.replicas if replica not in self.removing)


@dataclass(frozen=True)
class TopicState:
    name: str
    topic_id: uuid.UUID
    partitions: tuple[PartitionState, ...]
    configs: Mapping[str, str] = field(default_factory=dict)
    """Config overrides by Kafka name; everything else takes the broker's defaults."""

    @property
    def replication_factor(self) -> int:
        return len(self.partitions[0].target_replicas) if self.partitions else 0

"""The metadata commands: every change the Raft quorum replicates, one frozen dataclass each.

A command carries everything its change depends on (ids, the proposer's limits), so
``ClusterState.apply`` makes the same change on every member. ``Command[R]`` names what
applying it returns: ``await quorum.submit(CreateTopic(...))`` is a ``TopicState`` to the
type checker, and a misspelt command or argument is a type error, not a refusal logged
on every replica.

Commands are pickled into the Raft journal and read again after a restart, so a class
keeps its module, name and field names once released; a field added later needs a
default, which an entry written without it reads (pickle restores the instance's fields,
and a missing one falls back to the class attribute).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import ApiError
from .model import PartitionState, TopicState
from .placement import PartitionKey
from .topics import PartitionLimits

Result = TypeVar("Result", covariant=True)


class Command(Generic[Result]):
    """A change of the cluster state that returns ``Result`` when applied."""


# --- brokers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterBroker(Command[int]):
    """Register a new or returning broker; returns its new broker epoch."""

    node_id: int
    host: str
    port: int
    rack: str | None
    internal_host: str = ""
    internal_port: int = 0


@dataclass(frozen=True)
class FenceBroker(Command[None]):
    """The broker's session expired (ignored for an earlier ``epoch`` of the broker)."""

    node_id: int
    epoch: int


@dataclass(frozen=True)
class UnfenceBroker(Command[None]):
    """A fenced broker heartbeats again."""

    node_id: int
    epoch: int


@dataclass(frozen=True)
class BeginControlledShutdown(Command[bool]):
    """Move the broker's leaderships away; True once it may stop."""

    node_id: int
    epoch: int


# --- topics --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateTopic(Command[TopicState]):
    """Create a topic; ``assignments`` (replica lists by partition) replace placement."""

    name: str
    topic_id: uuid.UUID
    partitions: int
    replication_factor: int
    configs: Mapping[str, str]
    assignments: Sequence[Sequence[int]] | None = None
    limits: PartitionLimits | None = None


@dataclass(frozen=True)
class DeleteTopic(Command[None]):
    name: str


@dataclass(frozen=True)
class CreatePartitions(Command[TopicState]):
    """Grow a topic to ``total`` partitions; ``assignments`` are the new ones' replicas."""

    name: str
    total: int
    assignments: Sequence[Sequence[int]] | None = None
    limits: PartitionLimits | None = None


@dataclass(frozen=True)
class AlterTopicConfigs(Command[TopicState]):
    """Replace the topic's config overrides (already validated) with ``configs``."""

    name: str
    configs: Mapping[str, str]


# --- partitions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AlterPartition(Command[PartitionState]):
    """An ISR change proposed by the partition's leader, from the epochs it names."""

    topic: str
    partition: int
    leader_id: int
    leader_epoch: int
    partition_epoch: int
    new_isr: Sequence[int]


@dataclass(frozen=True)
class ElectLeaders(Command[dict[PartitionKey, ApiError | None]]):
    """A preferred or unclean election for each partition; each gets None (elected) or
    the error that says why not."""

    election: str
    partitions: Sequence[PartitionKey]


@dataclass(frozen=True)
class AlterReassignment(Command[None]):
    """Move a partition to the ``target`` replicas, or cancel its reassignment (None)."""

    topic: str
    partition: int
    target: Sequence[int] | None
    limits: PartitionLimits | None = None


# --- producer ids --------------------------------------------------------------------------


@dataclass(frozen=True)
class AllocateProducerIds(Command[int]):
    """Reserve ``count`` producer ids; returns the first."""

    count: int

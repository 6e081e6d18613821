"""What to do about one Topic resource, decided without I/O: from its spec, the brokers
of its cluster and the topic as the cluster has it, either a refusal (nothing changes in
the cluster; the condition says exactly why) or the admin actions that bring the topic
to the spec, in order.

The topic's config overrides are the spec's ``config`` plus ``min.insync.replicas`` from
``minInsyncReplicas``, which the operator owns: any other override found on the topic
was set out of band and is deleted. Replication-factor changes are reassignments; while
one runs, nothing else but configs is changed, and ``min.insync.replicas`` is raised
above the replicas a partition has only once its new replicas are there (acks=all
writes would be refused meanwhile).

``partitionAutoscale`` (opt-in) grows the partitions when the topic's consumers cannot
keep up: :func:`plan_partition_growth` decides from the ConsumerGroups reading the topic.
The count it grows to is kept in the status (``autoscaledPartitions``) and wins over a
smaller ``spec.partitions``, so that applying the original manifest again neither
shrinks the topic (Kafka cannot) nor fights the policy.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from brook_broker.metadata.errors import ApiError
from brook_broker.metadata.topic_config import TOPIC_CONFIGS
from brook_broker.metadata.topics import validate_topic_name
from brook_client.cluster_admin import TopicDescription

from .conditions import condition

MIN_INSYNC_REPLICAS = "min.insync.replicas"
DELETE, RETAIN = "Delete", "Retain"

# Condition reasons.
REPLICATION_FACTOR_TOO_LARGE = "ReplicationFactorTooLarge"
MIN_ISR_ABOVE_REPLICATION_FACTOR = "MinIsrAboveReplicationFactor"
PARTITIONS_CANNOT_SHRINK = "PartitionsCannotShrink"
UNKNOWN_CONFIG = "UnknownConfig"
INVALID_CONFIG = "InvalidConfig"
INVALID_TOPIC_NAME = "InvalidTopicName"
MIN_ISR_EQUALS_REPLICATION_FACTOR = "MinIsrEqualsReplicationFactor"


@dataclass(frozen=True)
class PartitionAutoscale:
    """``spec.partitionAutoscale``: when to add partitions for consumers that cannot keep up."""

    enabled: bool = False
    max_partitions: int = 0
    step: int | None = None
    """Partitions added at a time; None doubles the current count."""
    after_seconds: int = 300

    @classmethod
    def from_resource(cls, policy: Mapping[str, Any] | None) -> PartitionAutoscale:
        policy = policy or {}
        step = policy.get("step")
        return cls(
            enabled=bool(policy.get("enabled", False)),
            max_partitions=int(policy.get("maxPartitions", 0)),
            step=None if step is None else int(step),
            after_seconds=int(policy.get("afterSeconds", 300)),
        )


@dataclass(frozen=True)
class TopicSpec:
    """A Topic resource's spec with the CRD's defaults filled in."""

    cluster: str
    topic_name: str
    partitions: int = 1
    replication_factor: int = 3
    min_insync_replicas: int = 2
    config: Mapping[str, str] = field(default_factory=dict)
    deletion_policy: str = DELETE
    partition_autoscale: PartitionAutoscale = field(default_factory=PartitionAutoscale)

    @classmethod
    def from_resource(cls, name: str, spec: Mapping[str, Any]) -> TopicSpec:
        return cls(
            cluster=str(spec.get("cluster", "")),
            topic_name=str(spec.get("topicName") or name),
            partitions=int(spec.get("partitions", 1)),
            replication_factor=int(spec.get("replicationFactor", 3)),
            min_insync_replicas=int(spec.get("minInsyncReplicas", 2)),
            config={str(k): str(v) for k, v in (spec.get("config") or {}).items()},
            deletion_policy=str(spec.get("deletionPolicy", DELETE)),
            partition_autoscale=PartitionAutoscale.from_resource(spec.get("partitionAutoscale")),
        )


@dataclass(frozen=True)
class ObservedTopic:
    """The topic as the cluster has it: partitions, config overrides, and the
    partitions with a reassignment in progress with the replicas they are adding."""

    description: TopicDescription
    overrides: Mapping[str, str] = field(default_factory=dict)
    reassigning: Mapping[int, Collection[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class CreateTopic:
    partitions: int
    replication_factor: int
    configs: Mapping[str, str]


@dataclass(frozen=True)
class GrowPartitions:
    current: int
    count: int


@dataclass(frozen=True)
class AlterConfigs:
    set_configs: Mapping[str, str]
    delete_configs: tuple[str, ...]


@dataclass(frozen=True)
class Reassign:
    """Move partitions to their target replicas to reach ``replication_factor``."""

    replication_factor: int
    targets: Mapping[int, tuple[int, ...]]


Action = CreateTopic | GrowPartitions | AlterConfigs | Reassign


@dataclass(frozen=True)
class Finding:
    """A condition's reason and the message saying exactly why."""

    reason: str
    message: str


@dataclass(frozen=True)
class TopicPlan:
    refusals: tuple[Finding, ...] = ()
    actions: tuple[Action, ...] = ()
    warnings: tuple[Finding, ...] = ()
    pending: tuple[str, ...] = ()
    """What is still underway after the actions (reassignments), for the Ready message."""
    reassigning: tuple[int, ...] = ()
    """Partitions with a reassignment in progress."""

    @property
    def refused(self) -> bool:
        return bool(self.refusals)

    @property
    def settled(self) -> bool:
        """The topic matches its spec: nothing to do, nothing underway, nothing refused."""
        return not (self.refusals or self.actions or self.pending)


def plan_topic(
    spec: TopicSpec,
    brokers: Sequence[int],
    observed: ObservedTopic | None,
    cluster_size: int | None = None,
) -> TopicPlan:
    """The plan for ``spec``. ``brokers`` are the live brokers' node ids; ``cluster_size``
    is how many brokers the cluster is meant to have (default: the live ones), so that a
    broker restarting does not turn a valid spec into a refused one."""
    size = len(brokers) if cluster_size is None else max(cluster_size, len(brokers))
    refusals, desired = _check(spec, size, observed)
    warnings: tuple[Finding, ...] = ()
    if spec.min_insync_replicas == spec.replication_factor:
        warnings = (
            Finding(
                MIN_ISR_EQUALS_REPLICATION_FACTOR,
                f"minInsyncReplicas {spec.min_insync_replicas} equals replicationFactor "
                f"{spec.replication_factor}: with one broker of a partition down, acks=all "
                "writes to it are refused",
            ),
        )
    if refusals:
        return TopicPlan(refusals=refusals, warnings=warnings)
    if observed is None:
        create = CreateTopic(spec.partitions, spec.replication_factor, desired)
        if len(brokers) < spec.replication_factor:
            waiting = _waiting_for_brokers(spec.replication_factor, brokers)
            return TopicPlan(warnings=warnings, pending=(waiting,))
        return TopicPlan(actions=(create,), warnings=warnings)
    return _changes(spec, brokers, observed, desired, warnings)


def _check(
    spec: TopicSpec, cluster_size: int, observed: ObservedTopic | None
) -> tuple[tuple[Finding, ...], dict[str, str]]:
    """Every reason to refuse the spec, and the config overrides it asks for."""
    refusals = []
    try:
        validate_topic_name(spec.topic_name)
    except ApiError as error:
        refusals.append(Finding(INVALID_TOPIC_NAME, error.message))
    if spec.replication_factor > cluster_size:
        refusals.append(
            Finding(
                REPLICATION_FACTOR_TOO_LARGE,
                f"replicationFactor {spec.replication_factor} is more than the "
                f"{cluster_size} brokers of cluster {spec.cluster!r}: each replica of a "
                "partition needs its own broker",
            )
        )
    if spec.min_insync_replicas > spec.replication_factor:
        refusals.append(
            Finding(
                MIN_ISR_ABOVE_REPLICATION_FACTOR,
                f"minInsyncReplicas {spec.min_insync_replicas} is more than "
                f"replicationFactor {spec.replication_factor}: no acks=all write could "
                "ever succeed",
            )
        )
    if observed is not None and spec.partitions < len(observed.description.partitions):
        refusals.append(
            Finding(
                PARTITIONS_CANNOT_SHRINK,
                f"partitions {spec.partitions} is fewer than the "
                f"{len(observed.description.partitions)} topic {spec.topic_name!r} has: "
                "Kafka topics cannot lose partitions",
            )
        )
    desired: dict[str, str] = {}
    for name, value in sorted(spec.config.items()):
        key = TOPIC_CONFIGS.get(name)
        if key is None:
            known = ", ".join(sorted(TOPIC_CONFIGS))
            refusals.append(
                Finding(UNKNOWN_CONFIG, f"unknown topic config {name!r} (known: {known})")
            )
        elif name == MIN_INSYNC_REPLICAS:
            refusals.append(
                Finding(
                    INVALID_CONFIG,
                    f"set {MIN_INSYNC_REPLICAS} with spec.minInsyncReplicas, not spec.config",
                )
            )
        else:
            try:
                desired[name] = key.check(value)
            except ApiError as error:
                refusals.append(Finding(INVALID_CONFIG, error.message))
    desired[MIN_INSYNC_REPLICAS] = str(spec.min_insync_replicas)
    return tuple(refusals), desired


def _changes(
    spec: TopicSpec,
    brokers: Sequence[int],
    observed: ObservedTopic,
    desired: dict[str, str],
    warnings: tuple[Finding, ...],
) -> TopicPlan:
    topic = observed.description
    actions: list[Action] = []
    pending: list[str] = []
    current_partitions = len(topic.partitions)
    reassigning = sorted(observed.reassigning)
    if reassigning:
        pending.append(f"reassignment of partitions {', '.join(map(str, reassigning))} in progress")
    elif spec.partitions > current_partitions:
        actions.append(GrowPartitions(current_partitions, spec.partitions))

    # Replicas a partition has for certain: raising min ISR above them waits for them.
    adding = observed.reassigning
    fewest_replicas = min(
        (len(p.replicas) - len(adding.get(p.partition, ())) for p in topic.partitions), default=0
    )
    if spec.min_insync_replicas > fewest_replicas:
        desired[MIN_INSYNC_REPLICAS] = str(max(1, fewest_replicas))
        pending.append(
            f"{MIN_INSYNC_REPLICAS} {spec.min_insync_replicas} waits for "
            f"{spec.replication_factor} replicas of every partition"
        )
    set_configs = {k: v for k, v in desired.items() if observed.overrides.get(k) != v}
    delete_configs = tuple(sorted(observed.overrides.keys() - desired.keys()))
    if set_configs or delete_configs:
        actions.append(AlterConfigs(set_configs, delete_configs))

    if not reassigning:
        targets = replica_targets(topic, spec.replication_factor, brokers)
        if any(len(replicas) < spec.replication_factor for replicas in targets.values()):
            pending.append(_waiting_for_brokers(spec.replication_factor, brokers))
        elif targets:
            actions.append(Reassign(spec.replication_factor, targets))
    return TopicPlan(
        actions=tuple(actions),
        warnings=warnings,
        pending=tuple(pending),
        reassigning=tuple(reassigning),
    )


def replica_targets(
    topic: TopicDescription, replication_factor: int, brokers: Sequence[int]
) -> dict[int, tuple[int, ...]]:
    """Target replicas of the partitions whose replica count is not ``replication_factor``.

    A partition keeps the replicas it has, first one (its preferred leader) first. Added
    replicas go to the live brokers holding the fewest replicas of the topic (the next
    ones after the first replica among equals); removed ones come off the brokers
    holding the most, never the first replica.
    """
    load = Counter({node: 0 for node in brokers})
    for partition in topic.partitions:
        load.update(partition.replicas)
    targets = {}
    for partition in topic.partitions:
        replicas = list(partition.replicas)
        if len(replicas) == replication_factor:
            continue
        while len(replicas) > replication_factor:
            removable = replicas[1:] or replicas
            # The most loaded; among equals, the one last in the list.
            leaving = max(reversed(removable), key=lambda node: load[node])
            replicas.remove(leaving)
            load[leaving] -= 1
        ring = sorted(brokers)
        start = ring.index(replicas[0]) if replicas[0] in ring else partition.partition
        # Among equally loaded brokers, the next ones after the first replica on the ring.
        candidates = [
            node
            for node in ring[start % len(ring) :] + ring[: start % len(ring)]
            if node not in replicas
        ]
        while len(replicas) < replication_factor and candidates:
            joining = min(candidates, key=lambda node: load[node])
            candidates.remove(joining)
            replicas.append(joining)
            load[joining] += 1
        targets[partition.partition] = tuple(replicas)
    return targets


def _waiting_for_brokers(replication_factor: int, brokers: Sequence[int]) -> str:
    return (
        f"waiting for {replication_factor} live brokers to place the replicas on "
        f"({len(brokers)} live now)"
    )


# --- status ------------------------------------------------------------------------------

READY, WARNING = "Ready", "Warning"
TOPIC_READY = "TopicReady"
RECONCILING = "Reconciling"


def partitions_status(topic: TopicDescription) -> list[dict[str, Any]]:
    return [
        {
            "partition": p.partition,
            "leader": p.leader,
            "replicas": list(p.replicas),
            "isr": list(p.isr),
        }
        for p in topic.partitions
    ]


def conditions(
    ready: bool,
    finding: Finding,
    warnings: Sequence[Finding],
    previous: Sequence[Mapping[str, Any]],
    now: str,
) -> list[dict[str, Any]]:
    """The Ready condition (and the Warning one when there is a warning); a condition
    keeps its lastTransitionTime while its status stays the same."""
    wanted = [(READY, ready, finding)]
    if warnings:
        wanted.append(
            (WARNING, True, Finding(warnings[0].reason, "; ".join(w.message for w in warnings)))
        )
    return [
        condition(kind, holds, found.reason, found.message, previous, now)
        for kind, holds, found in wanted
    ]


def ready_finding(spec: TopicSpec, plan: TopicPlan) -> tuple[bool, Finding]:
    """Whether the topic is Ready, with the reason and message of the Ready condition."""
    if plan.refusals:
        return False, Finding(
            plan.refusals[0].reason,
            "refused, nothing changed: " + "; ".join(r.message for r in plan.refusals),
        )
    if plan.actions or plan.pending:
        underway = [*map(describe_action, plan.actions), *plan.pending]
        return False, Finding(RECONCILING, "; ".join(underway))
    return True, Finding(
        TOPIC_READY,
        f"topic {spec.topic_name!r} has {spec.partitions} partitions with "
        f"{spec.replication_factor} replicas each, min.insync.replicas "
        f"{spec.min_insync_replicas}",
    )


def describe_action(action: Action) -> str:
    """What an action does, in the words of its Event."""
    if isinstance(action, CreateTopic):
        configs = ", ".join(f"{k}={v}" for k, v in sorted(action.configs.items()))
        return (
            f"create the topic with {action.partitions} partitions, replication factor "
            f"{action.replication_factor} and configs {configs}"
        )
    if isinstance(action, GrowPartitions):
        return f"grow partitions from {action.current} to {action.count}"
    if isinstance(action, AlterConfigs):
        changes = [f"set {k}={v}" for k, v in sorted(action.set_configs.items())]
        changes += [f"delete {k}" for k in action.delete_configs]
        return "configs: " + ", ".join(changes)
    moves = ", ".join(f"{p}: {list(r)}" for p, r in sorted(action.targets.items()))
    return f"reassign to replication factor {action.replication_factor} ({moves})"


# --- partition autoscaling ---------------------------------------------------------------

# Reasons of the policy's last decision (status.partitionAutoscale); the first is also
# the reason of the Event of a growth.
PARTITIONS_AUTOSCALED = "PartitionsAutoscaled"
TOPIC_NOT_READY = "TopicNotReady"
AT_MAX_PARTITIONS = "AtMaxPartitions"
NOT_CAPPED = "NotCappedByPartitions"
CAPPED_BY_PARTITIONS = "CappedByPartitions"
"""Also the type of the ConsumerGroup condition saying since when it is capped."""


@dataclass(frozen=True)
class GroupSignal:
    """What a ConsumerGroup's status says about the topic's partitions being its limit."""

    name: str
    capped: bool
    lag_growth_per_second: float | None
    capped_since: datetime.datetime | None = None
    """When the group's CappedByPartitions condition last turned True, if it says."""

    @property
    def wants_partitions(self) -> bool:
        """Capped at the partition count while the lag still grows: more replicas cannot
        help, more partitions can."""
        return self.capped and (self.lag_growth_per_second or 0.0) > 0

    def describe(self) -> str:
        rate = self.lag_growth_per_second
        if not self.capped:
            return f"ConsumerGroup {self.name!r} is not capped by partitions"
        if rate is None or rate <= 0:
            growth = "no lag growth reported" if rate is None else f"lag not growing ({rate:g}/s)"
            return f"ConsumerGroup {self.name!r} is capped by partitions with {growth}"
        return f"ConsumerGroup {self.name!r} is capped by partitions with lag growing {rate:g}/s"


def groups_reading(
    resources: Iterable[Mapping[str, Any]], cluster: str, topic_name: str
) -> list[GroupSignal]:
    """The signals of the ConsumerGroup resources (of the Topic's namespace) that read
    ``topic_name`` in ``cluster``. A status written for an older spec of its group says
    nothing about the group as it is now and is left out."""
    signals = []
    for group in resources:
        spec = group.get("spec") or {}
        status = group.get("status") or {}
        if spec.get("cluster") != cluster or topic_name not in (spec.get("topics") or ()):
            continue
        observed = status.get("observedGeneration")
        if observed is not None and observed != (group.get("metadata") or {}).get("generation"):
            continue
        capped_condition = [
            c
            for c in status.get("conditions") or ()
            if c.get("type") == CAPPED_BY_PARTITIONS and c.get("status") == "True"
        ]
        rate = status.get("lagGrowthPerSecond")
        signals.append(
            GroupSignal(
                name=str((group.get("metadata") or {}).get("name", "")),
                capped=status.get("cappedByPartitions") is True,
                lag_growth_per_second=None if rate is None else float(rate),
                capped_since=parse_timestamp(
                    capped_condition[0].get("lastTransitionTime") if capped_condition else None
                ),
            )
        )
    return sorted(signals, key=lambda signal: signal.name)


@dataclass(frozen=True)
class PartitionGrowth:
    """The policy's decision at one reconciliation."""

    reason: str
    message: str
    capped_since: datetime.datetime | None = None
    """Since when some group has wanted partitions at every look (the policy's memory)."""
    count: int | None = None
    """The partition count to grow to; None: no growth now."""


def plan_partition_growth(
    policy: PartitionAutoscale,
    partitions: int | None,
    capped_since: datetime.datetime | None,
    groups: Sequence[GroupSignal],
    now: datetime.datetime,
) -> PartitionGrowth:
    """Whether to grow a topic of ``partitions`` partitions (None: not Ready, so not
    now), given since when groups have wanted more (``capped_since``, from the status)
    and what the groups say now.

    The topic grows by ``step`` (capped at ``maxPartitions``) once some group has been
    capped by partitions with growing lag at every look for ``afterSeconds``; a look
    where none is restarts the wait, and so does a growth, which gives the groups time to
    spread over the new partitions before they count again.
    """
    if partitions is None:
        return PartitionGrowth(
            TOPIC_NOT_READY, "partitions grow only while the topic is Ready", capped_since
        )
    if partitions >= policy.max_partitions:
        return PartitionGrowth(
            AT_MAX_PARTITIONS,
            f"the topic has {partitions} partitions, maxPartitions is {policy.max_partitions}",
        )
    wanting = [group for group in groups if group.wants_partitions]
    if not wanting:
        found = "; ".join(group.describe() for group in groups)
        return PartitionGrowth(NOT_CAPPED, found or "no ConsumerGroup reads the topic")
    start = min(capped_since or now, now)
    # A group that turned capped after the last look was not capped all along.
    turned = [group.capped_since for group in wanting]
    if all(turned):
        start = max(start, min(t for t in turned if t is not None))
    waited = max(0.0, (now - start).total_seconds())
    why = f"{'; '.join(group.describe() for group in wanting)}, for {waited:.0f} s"
    if waited < policy.after_seconds:
        return PartitionGrowth(
            CAPPED_BY_PARTITIONS, f"{why} of afterSeconds {policy.after_seconds}", start
        )
    step = policy.step or partitions
    count = min(partitions + step, policy.max_partitions)
    return PartitionGrowth(
        PARTITIONS_AUTOSCALED,
        f"grow partitions from {partitions} to {count} (step {step}, maxPartitions "
        f"{policy.max_partitions}): {why} (afterSeconds {policy.after_seconds})",
        now if count < policy.max_partitions else None,
        count,
    )


def ready_partition_count(status: Mapping[str, Any], generation: int | None) -> int | None:
    """The partitions of the topic if its last reconciliation found it Ready at the
    resource's current generation (a growth starts from there), else None."""
    ready = [c for c in status.get("conditions") or () if c.get("type") == READY]
    if not ready or ready[0].get("status") != "True":
        return None
    if status.get("observedGeneration") != generation:
        return None
    return len(status.get("partitions") or ()) or None


def autoscale_status(
    growth: PartitionGrowth, previous: Mapping[str, Any], now: datetime.datetime
) -> dict[str, Any]:
    """``status.partitionAutoscale``: the last decision, the policy's memory, and when it
    last grew the topic."""
    return {
        "reason": growth.reason,
        "message": growth.message,
        "cappedSince": timestamp(growth.capped_since) if growth.capped_since else None,
        "lastGrowthTime": timestamp(now) if growth.count else previous.get("lastGrowthTime"),
    }


def timestamp(moment: datetime.datetime) -> str:
    """A status time, as Kubernetes writes them (UTC, seconds)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)

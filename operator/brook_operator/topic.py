"""Kopf handlers of Topic resources: the topic in the cluster of the Broker the resource
names, brought to the spec with Kafka admin requests.

Creating, changing or resuming a Topic reconciles it at once; a timer reconciles it
again every ``RECONCILE_INTERVAL_S`` seconds, which puts back what was changed out of
band (configs, partitions added with other tools are kept since they cannot go) and
refreshes the status. What to do is decided by :func:`topic_plan.plan_topic`; each action
and each refusal is an Event. Deleting the resource deletes the topic unless
``deletionPolicy`` is ``Retain`` (Kopf's finalizer holds the resource until then).

With ``partitionAutoscale`` enabled, each reconciliation also looks at the ConsumerGroups
reading the topic's cluster and lets :func:`topic_plan.plan_partition_growth` decide
whether the topic needs more partitions; a growth raises ``status.autoscaledPartitions``,
which the reconciliation then applies like a larger ``spec.partitions``.

The Broker the Topic names and those ConsumerGroups come from Kopf's indexes
(:mod:`brook_operator.resource_index`), not from the API server at every tick.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from brook_client.admin import KafkaAdmin
from brook_client.cluster_admin import TopicDescription
from brook_client.session import KafkaAdminError, KafkaRequestError
from kio.schema.errors import ErrorCode

from . import metrics
from .broker_resources import GROUP, VERSION, bootstrap
from .resource_index import broker_seen, consumer_groups, namespaced
from .topic_plan import (
    PARTITIONS_AUTOSCALED,
    RECONCILING,
    RETAIN,
    Action,
    AlterConfigs,
    CreateTopic,
    Finding,
    GrowPartitions,
    ObservedTopic,
    Reassign,
    TopicPlan,
    TopicSpec,
    autoscale_status,
    conditions,
    describe_action,
    groups_reading,
    parse_timestamp,
    partitions_status,
    plan_partition_growth,
    plan_topic,
    ready_finding,
    ready_partition_count,
    timestamp,
)

PLURAL = "topics"
KIND = "Topic"
RECONCILE_INTERVAL_S = 10.0
CLUSTER_NOT_FOUND = "ClusterNotFound"
CLUSTER_UNAVAILABLE = "ClusterUnavailable"
ADMIN_REQUEST_FAILED = "AdminRequestFailed"

_EVENT_REASONS: Mapping[type, str] = {
    CreateTopic: "TopicCreated",
    GrowPartitions: "PartitionsGrown",
    AlterConfigs: "ConfigsChanged",
    Reassign: "ReassignmentStarted",
}


@dataclass
class _State:
    """What the operator keeps per Topic between handler calls (in Kopf's memo)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_event: str | None = None
    warned: str | None = None
    """The reason of the last Warning Event, until the topic is ready again."""
    reassigning: bool = False


def _state(memo: kopf.Memo) -> _State:
    if "topic" not in memo:
        memo.topic = _State()
    state: _State = memo.topic
    return state


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    name: str,
    namespace: str | None,
    memo: kopf.Memo,
    patch: kopf.Patch,
    **kwargs: Any,
) -> None:
    where = namespaced(namespace)
    await _reconcile(body, spec, status, meta, name, where, _state(memo), patch, kwargs)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RECONCILE_INTERVAL_S, initial_delay=1.0)
async def reconcile_again(
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    name: str,
    namespace: str | None,
    memo: kopf.Memo,
    patch: kopf.Patch,
    **kwargs: Any,
) -> None:
    if meta.get("deletionTimestamp"):
        return
    where = namespaced(namespace)
    await _reconcile(body, spec, status, meta, name, where, _state(memo), patch, kwargs)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete_topic(
    body: kopf.Body,
    spec: kopf.Spec,
    name: str,
    namespace: str | None,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    namespace = namespaced(namespace)
    topic = TopicSpec.from_resource(name, spec)
    if topic.deletion_policy == RETAIN:
        kopf.info(body, reason="TopicRetained", message=f"topic {topic.topic_name!r} is kept")
        return
    if broker_seen(kwargs, namespace, topic.cluster) is None:
        # No cluster, no topic: nothing holds the resource back.
        return
    async with _state(memo).lock, KafkaAdmin(bootstrap(topic.cluster, namespace)) as admin:
        try:
            await admin.delete_topic(topic.topic_name)
        except KafkaAdminError as error:
            if error.code != ErrorCode.unknown_topic_or_partition:
                raise kopf.TemporaryError(str(error), delay=RECONCILE_INTERVAL_S) from None
        except KafkaRequestError as error:
            raise kopf.TemporaryError(str(error), delay=RECONCILE_INTERVAL_S) from None
    metrics.TOPIC_ACTIONS.labels("delete").inc()
    kopf.info(body, reason="TopicDeleted", message=f"topic {topic.topic_name!r} deleted")


# --- reconciliation ----------------------------------------------------------------------


async def _reconcile(
    body: kopf.Body,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    meta: Mapping[str, Any],
    name: str,
    namespace: str,
    state: _State,
    patch: kopf.Patch,
    indexes: Mapping[str, Any],
) -> None:
    """``indexes``: the handler's keyword arguments, where Kopf passes each index."""
    topic = TopicSpec.from_resource(name, spec)
    previous = list(status.get("conditions") or [])
    patch.status["topicName"] = topic.topic_name
    patch.status["observedGeneration"] = meta.get("generation")
    async with state.lock:
        broker = broker_seen(indexes, namespace, topic.cluster)
        if broker is None:
            finding = Finding(
                CLUSTER_NOT_FOUND,
                f"no Broker {topic.cluster!r} in namespace {namespace!r}",
            )
            _conclude(body, state, patch, previous, False, finding, (), "failed")
            return
        groups = consumer_groups(indexes, namespace, topic.cluster)
        topic = _autoscale_partitions(body, topic, status, meta, namespace, groups, patch)
        try:
            async with KafkaAdmin(bootstrap(topic.cluster, namespace)) as admin:
                plan, observed, applied = await _apply(body, state, admin, topic, broker.replicas)
        except KafkaAdminError as error:
            finding = Finding(ADMIN_REQUEST_FAILED, str(error))
            _conclude(body, state, patch, previous, False, finding, (), "failed")
            return
        except KafkaRequestError as error:
            finding = Finding(CLUSTER_UNAVAILABLE, str(error))
            _conclude(body, state, patch, previous, False, finding, (), "failed")
            return
    if observed is not None:
        patch.status["topicId"] = observed.topic_id
        patch.status["partitions"] = partitions_status(observed)
        patch.status["underReplicatedPartitions"] = sum(
            p.under_replicated for p in observed.partitions
        )
    ready, finding = ready_finding(topic, plan)
    outcome = "refused" if plan.refused else "applied" if applied else "unchanged"
    _conclude(body, state, patch, previous, ready, finding, plan.warnings, outcome)


async def _apply(
    body: kopf.Body, state: _State, admin: KafkaAdmin, topic: TopicSpec, cluster_size: int
) -> tuple[TopicPlan, TopicDescription | None, bool]:
    """Plan, apply the plan's actions, and plan again on what the cluster then says (the
    plan that the status reports); whether actions were applied."""
    plan, observed = await observe_and_plan(admin, topic, cluster_size)
    applied = bool(plan.actions)
    if applied:
        for action in plan.actions:
            await run_action(admin, topic.topic_name, action)
            metrics.TOPIC_ACTIONS.labels(type(action).__name__).inc()
            kopf.info(body, reason=_EVENT_REASONS[type(action)], message=describe_action(action))
        state.reassigning = state.reassigning or any(
            isinstance(action, Reassign) for action in plan.actions
        )
        plan, observed = await observe_and_plan(admin, topic, cluster_size)
    if state.reassigning and not plan.reassigning:
        kopf.info(
            body,
            reason="ReassignmentFinished",
            message=f"topic {topic.topic_name!r} has replication factor {topic.replication_factor}",
        )
    state.reassigning = bool(plan.reassigning)
    return plan, observed, applied


async def observe_and_plan(
    admin: KafkaAdmin, topic: TopicSpec, cluster_size: int | None = None
) -> tuple[TopicPlan, TopicDescription | None]:
    """The plan for the topic as the cluster has it now, and what the cluster said."""
    cluster = await admin.describe_cluster()
    description = await admin.describe_topic(topic.topic_name)
    observed = None
    if description is not None:
        configs = await admin.describe_topic_configs(topic.topic_name)
        reassignments = await admin.list_partition_reassignments([topic.topic_name])
        observed = ObservedTopic(
            description,
            overrides={k: c.value for k, c in configs.items() if c.override and c.value},
            reassigning={p: r.adding for (_, p), r in reassignments.items()},
        )
    brokers = [broker.node_id for broker in cluster.brokers]
    return plan_topic(topic, brokers, observed, cluster_size), description


async def run_action(admin: KafkaAdmin, name: str, action: Action) -> None:
    """One action of a plan, as the admin request that does it."""
    if isinstance(action, CreateTopic):
        await admin.create_topic(name, action.partitions, action.replication_factor, action.configs)
    elif isinstance(action, GrowPartitions):
        await admin.create_partitions(name, action.count)
    elif isinstance(action, AlterConfigs):
        await admin.alter_topic_configs(name, action.set_configs, action.delete_configs)
    else:
        await admin.alter_partition_reassignments(name, action.targets)


def _autoscale_partitions(
    body: kopf.Body,
    topic: TopicSpec,
    status: Mapping[str, Any],
    meta: Mapping[str, Any],
    namespace: str,
    groups: Iterable[Mapping[str, Any]],
    patch: kopf.Patch,
) -> TopicSpec:
    """The spec to reconcile to: ``spec.partitions`` raised to the count the
    partitionAutoscale policy grew the topic to, after this round's decision (status,
    Event and metric when it grows); ``groups`` are the ConsumerGroups of the cluster."""
    autoscaled = int(status.get("autoscaledPartitions") or 0)
    policy = topic.partition_autoscale
    previous = status.get("partitionAutoscale") or {}
    if not policy.enabled:
        if previous:
            patch.status["partitionAutoscale"] = None
    else:
        now = datetime.datetime.now(datetime.UTC)
        current = ready_partition_count(status, meta.get("generation"))
        growth = plan_partition_growth(
            policy,
            current,
            parse_timestamp(previous.get("cappedSince")),
            groups_reading(groups, topic.cluster, topic.topic_name),
            now,
        )
        patch.status["partitionAutoscale"] = autoscale_status(growth, previous, now)
        if growth.count is not None and current is not None:
            autoscaled = growth.count
            patch.status["autoscaledPartitions"] = autoscaled
            metrics.PARTITIONS_AUTOSCALED.labels(namespace, topic.topic_name).inc(
                growth.count - current
            )
            kopf.info(body, reason=PARTITIONS_AUTOSCALED, message=growth.message)
    return dataclasses.replace(topic, partitions=max(topic.partitions, autoscaled))


def _conclude(
    body: kopf.Body,
    state: _State,
    patch: kopf.Patch,
    previous: list[Mapping[str, Any]],
    ready: bool,
    finding: Finding,
    warnings: tuple[Finding, ...],
    outcome: str,
) -> None:
    """Conditions into the status; a Warning Event when the topic stops being ready for a
    new reason (refused, cluster missing or unreachable), not again at every timer tick,
    and a Normal one when it is ready again after such a warning."""
    now = timestamp(datetime.datetime.now(datetime.UTC))
    patch.status["conditions"] = conditions(ready, finding, warnings, previous, now)
    metrics.RECONCILIATIONS.labels(KIND, outcome).inc()
    event = f"{finding.reason}: {finding.message}"
    if not ready and finding.reason != RECONCILING and state.last_event != event:
        kopf.warn(body, reason=finding.reason, message=finding.message)
        state.warned = finding.reason
    if ready and state.warned is not None:
        kopf.info(
            body,
            reason=finding.reason,
            message=f"{finding.message}; no longer {state.warned}",
        )
        state.warned = None
    state.last_event = None if ready else event

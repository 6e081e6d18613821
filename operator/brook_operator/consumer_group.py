"""Kopf handlers of ConsumerGroup resources: the consumers of a Kafka consumer group
scaled by the group's lag, through the scale subresource of the workload that runs them.

A timer ticks every second; a group is read every ``intervalSeconds`` of its spec: the
partitions of its topics (Metadata), their log start and log end offsets (ListOffsets)
and the group's committed offsets (OffsetFetch), as any Kafka admin tool reads them, over
one session with the cluster per read. Whether the group's Broker exists is looked up in
Kopf's index of Brokers (:mod:`brook_operator.resource_index`).
:class:`autoscaler.Autoscaler` decides; each scale written and each partition found
stuck is an Event, and the status tells the numbers behind the last decision.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from dataclasses import dataclass
from typing import Any

import kopf
from brook_broker.protocol.client import KafkaClient
from brook_client.admin import KafkaAdmin
from brook_client.lag import PartitionOffsets, TopicPartition
from brook_client.session import Connect, KafkaRequestError
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import metrics
from .autoscaler import Autoscaler, AutoscalerSpec, Decision, conditions
from .broker_resources import GROUP, VERSION, bootstrap
from .resource_index import broker_seen, namespaced

PLURAL = "consumergroups"
KIND = "ConsumerGroup"
TICK_S = 1.0
DEFAULT_INTERVAL_S = 10.0
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
CLIENT_ID = "brook-operator"

CLUSTER_NOT_FOUND = "ClusterNotFound"
CLUSTER_UNAVAILABLE = "ClusterUnavailable"
TOPIC_NOT_FOUND = "TopicNotFound"
TARGET_NOT_FOUND = "ScaleTargetNotFound"
TARGET_UNSUPPORTED = "ScaleTargetUnsupported"
SCALE_FAILED = "ScaleFailed"

_SCALE_APIS = {
    ("apps/v1", "Deployment"): (
        "read_namespaced_deployment_scale",
        "patch_namespaced_deployment_scale",
    ),
    ("apps/v1", "StatefulSet"): (
        "read_namespaced_stateful_set_scale",
        "patch_namespaced_stateful_set_scale",
    ),
}


class _Failure(Exception):
    """Why a tick could not decide or act: the Ready condition's reason and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class _State:
    """What the operator keeps per ConsumerGroup between ticks (in Kopf's memo)."""

    autoscaler: Autoscaler | None = None
    next_read: float = 0.0
    last_failure: str | None = None


def _state(memo: kopf.Memo) -> _State:
    if "consumer_group" not in memo:
        memo.consumer_group = _State()
    state: _State = memo.consumer_group
    return state


@kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_S, initial_delay=1.0)
async def autoscale(
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
    namespace = namespaced(namespace)
    state = _state(memo)
    now = time.time()
    if meta.get("deletionTimestamp") or now < state.next_read:
        return
    state.next_read = now + float(spec.get("intervalSeconds", DEFAULT_INTERVAL_S))
    metrics.track(KIND, namespace, name)
    previous = list(status.get("conditions") or [])
    stamp = _timestamp(now)
    generation = meta.get("generation")
    patch.status["observedGeneration"] = generation
    try:
        if broker_seen(kwargs, namespace, spec["cluster"]) is None:
            raise _Failure(
                CLUSTER_NOT_FOUND, f"no Broker {spec['cluster']!r} in namespace {namespace!r}"
            )
        decision = await _tick(body, spec, status, name, namespace, state, now)
    except _Failure as failure:
        patch.status["conditions"] = conditions(
            None, (failure.reason, failure.message), previous, stamp, generation
        )
        metrics.RECONCILIATIONS.labels(KIND, "failed").inc()
        event = f"{failure.reason}: {failure.message}"
        if state.last_failure != event:
            kopf.warn(body, reason=failure.reason, message=failure.message)
        state.last_failure = event
        return
    state.last_failure = None
    patch.status.update(_status(decision, state))
    patch.status["conditions"] = conditions(decision, None, previous, stamp, generation)
    outcome = "applied" if decision.direction else "unchanged"
    metrics.RECONCILIATIONS.labels(KIND, outcome).inc()
    metrics.record_consumer_group(
        namespace,
        name,
        {(v.topic, v.partition): v.lag for v in decision.partitions},
        decision.recommendation,
        len(decision.stuck),
    )


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget(name: str, namespace: str | None, **_: Any) -> None:
    namespace = namespaced(namespace)
    metrics.forget_consumer_group(namespace, name)
    metrics.untrack(KIND, namespace, name)


async def _tick(
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    name: str,
    namespace: str,
    state: _State,
    now: float,
) -> Decision:
    """Read, decide, write the scale if the decision says so; the decision."""
    autoscaler_spec = AutoscalerSpec.from_resource(spec)
    target = spec["scaleTargetRef"]
    read_scale, patch_scale = _scale_api(target)
    replicas = await _replicas(read_scale, target["name"], namespace)
    offsets = await _read_offsets(spec, namespace)
    autoscaler = state.autoscaler
    if autoscaler is None:
        last_scale = status.get("lastScaleTime")
        autoscaler = state.autoscaler = Autoscaler(
            autoscaler_spec,
            replicas,
            started=now,
            last_scale_at=_parse_timestamp(last_scale) if last_scale else None,
        )
    autoscaler.spec = autoscaler_spec
    decision = autoscaler.observe(now, offsets, replicas)
    for stuck in decision.newly_stuck:
        kopf.warn(
            body,
            reason="PartitionStuck",
            message=(
                f"{stuck.topic}-{stuck.partition}: committed offset has not moved since "
                f"{_timestamp(stuck.since)} while the group consumes other partitions; "
                "its lag does not drive scaling"
            ),
        )
    if decision.direction is not None:
        await _write_scale(patch_scale, target["name"], namespace, decision.desired)
        autoscaler.scaled(now, decision.desired)
        metrics.CONSUMER_GROUP_SCALE_DECISIONS.labels(
            namespace, name, decision.direction, decision.reason
        ).inc()
        kopf.info(
            body,
            reason="ScaledUp" if decision.direction == "up" else "ScaledDown",
            message=f"{target.get('kind', 'Deployment')} {target['name']}: {decision.message}",
        )
    return decision


def _status(decision: Decision, state: _State) -> dict[str, Any]:
    autoscaler = state.autoscaler
    last_scale = autoscaler.last_scale_at if autoscaler is not None else None
    status: dict[str, Any] = {
        "partitions": [
            {
                "topic": view.topic,
                "partition": view.partition,
                "committedOffset": view.committed_offset,
                "logEndOffset": view.log_end_offset,
                "lag": view.lag,
                "stuck": view.stuck,
            }
            for view in decision.partitions
        ],
        "totalLag": decision.total_lag,
        "lagGrowthPerSecond": decision.lag_growth_per_second,
        "replicas": decision.desired,
        "desiredReplicas": decision.recommendation,
        "reason": decision.reason,
        "cappedByPartitions": decision.capped_by_partitions,
        "stuckPartitions": [
            {"topic": s.topic, "partition": s.partition, "since": _timestamp(s.since)}
            for s in decision.stuck
        ],
    }
    if last_scale is not None:
        status["lastScaleTime"] = _timestamp(last_scale)
    return status


# --- Kubernetes side -------------------------------------------------------------------------


def _scale_api(target: dict[str, Any]) -> tuple[Any, Any]:
    key = (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment"))
    if key not in _SCALE_APIS:
        raise _Failure(
            TARGET_UNSUPPORTED,
            f"scaleTargetRef {key[1]} of {key[0]}: only apps/v1 Deployment and StatefulSet "
            "are scaled",
        )
    apps = client.AppsV1Api()
    read, write = _SCALE_APIS[key]
    return getattr(apps, read), getattr(apps, write)


async def _replicas(read_scale: Any, name: str, namespace: str) -> int:
    try:
        scale = await asyncio.to_thread(read_scale, name, namespace)
    except ApiException as error:
        if error.status == 404:
            raise _Failure(
                TARGET_NOT_FOUND, f"no scale target {name!r} in namespace {namespace!r}"
            ) from None
        raise _Failure(TARGET_NOT_FOUND, f"reading the scale of {name!r}: {error.status}") from None
    return int(scale.spec.replicas or 0)


async def _write_scale(patch_scale: Any, name: str, namespace: str, replicas: int) -> None:
    try:
        await asyncio.to_thread(patch_scale, name, namespace, {"spec": {"replicas": replicas}})
    except ApiException as error:
        raise _Failure(
            SCALE_FAILED, f"writing {replicas} replicas to {name!r}: {error.status} {error.reason}"
        ) from None


# --- Kafka side ------------------------------------------------------------------------------


async def _read_offsets(
    spec: kopf.Spec, namespace: str, connect: Connect = KafkaClient
) -> dict[TopicPartition, PartitionOffsets]:
    """Every partition of the group's topics with the group's committed offset (None where
    it has none) and the log start and log end offsets, over one session."""
    cluster = spec["cluster"]
    address = bootstrap(cluster, namespace)
    try:
        async with KafkaAdmin(address, client_id=CLIENT_ID, connect=connect) as admin:
            topics = await admin.describe_topics(spec["topics"])
            missing = sorted(topic for topic, found in topics.items() if found is None)
            if missing:
                raise _Failure(
                    TOPIC_NOT_FOUND, f"topics not in cluster {cluster!r}: {', '.join(missing)}"
                )
            partitions = [
                (topic, partition.partition)
                for topic, description in topics.items()
                if description is not None
                for partition in description.partitions
            ]
            return await admin.group_offsets(spec["groupId"], partitions)
    except KafkaRequestError as error:
        raise _Failure(CLUSTER_UNAVAILABLE, f"reading the lag from {address}: {error}") from None


def _timestamp(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime(TIME_FORMAT)


def _parse_timestamp(text: str) -> float:
    return (
        datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
        .replace(tzinfo=datetime.UTC)
        .timestamp()
    )

"""Kopf handlers of Broker resources: apply the Broker's objects, keep its status.

Creating, changing or resuming a Broker applies its objects (create what is missing,
patch what differs, leave the rest alone). A daemon per Broker reads its StatefulSet and
its cluster every ``BROOK_OPERATOR_STATUS_INTERVAL`` seconds, puts objects deleted or
changed by hand back, takes the next step of any scaling or rolling restart, and writes
the status when it changed. A refused spec changes nothing in the cluster: the Ready
condition and a Warning event say why.

Scaling never costs data (decisions in :mod:`brook_operator.broker_scaling`): more
replicas scale the StatefulSet first, then, once the new brokers have registered,
partitions are reassigned onto them (throttled) and preferred leaders elected; fewer
replicas drain the leaving brokers first and shrink the StatefulSet only once nothing is
on them and every ISR is full. The pods are replaced ``OnDelete``: the operator restarts
them one at a time, only when the cluster can spare the broker, the controller last.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from brook_broker.metadata.placement import PartitionKey, PlacementBroker
from brook_broker.protocol.cluster_client import KafkaRequestError
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import metrics
from .broker_resources import (
    GROUP,
    VERSION,
    BrokerSpec,
    InvalidSpec,
    adopt_cluster_secret,
    bootstrap,
    broker_env,
    cluster_secret,
    immutable_changes,
    manifests,
    needs_update,
    rack_binding_name,
    selector_labels,
    update_patch,
)
from .broker_scaling import (
    DRAINING,
    IDLE,
    REASSIGNING,
    RESTARTING,
    AutoscaleBounds,
    BrokerPod,
    autoscale_replicas,
    balance_plan,
    leaving_brokers,
    next_restart,
    scale_in_refusal,
    undrained,
)
from .broker_status import Observed, Refusal, broker_status, status_changes
from .cluster_view import ClusterReader, ClusterView
from .kafka_admin import Reassignment
from .settings import OperatorSettings

PLURAL = "brokers"
KIND = "Broker"
_MERGE_PATCH = "application/merge-patch+json"
_API_RETRY_DELAY_S = 10.0
_CLUSTER_TIMEOUT_S = 5.0
_MAX_PLANS = 3
"""Reassignment rounds of one scale-out: placement converges in one; more means the
layout keeps changing under it (topics created meanwhile), and balance can wait."""
_REVISION_LABEL = "controller-revision-hash"

_APIS: dict[str, tuple[type, str]] = {
    "ServiceAccount": (client.CoreV1Api, "service_account"),
    "ConfigMap": (client.CoreV1Api, "config_map"),
    "Service": (client.CoreV1Api, "service"),
    "StatefulSet": (client.AppsV1Api, "stateful_set"),
    "PodDisruptionBudget": (client.PolicyV1Api, "pod_disruption_budget"),
    "ClusterRoleBinding": (client.RbacAuthorizationV1Api, "cluster_role_binding"),
}


@dataclass
class _Scaling:
    """Where scaling or a rolling restart stands; the status reports it."""

    phase: str = IDLE
    message: str = ""
    brokers: tuple[int, ...] = ()
    """The brokers added, leaving, or not yet restarted."""
    planned: frozenset[PartitionKey] = frozenset()
    """Partitions of the reassignments submitted for this scaling."""
    plans: int = 0
    restarting: tuple[str, str] | None = None
    """The pod deleted last (name, uid), until its successor is up."""
    revision: str | None = None
    restarted: tuple[int, ...] = ()
    """Brokers restarted onto ``revision``."""

    def report(self, remaining: int) -> dict[str, Any]:
        total = len(self.planned)
        return {
            "phase": self.phase,
            "message": self.message,
            "brokers": list(self.brokers),
            "progress": {"moved": max(total - remaining, 0), "total": total},
        }


@dataclass
class _State:
    """What the operator keeps per Broker between handler calls (in Kopf's memo)."""

    lock: asyncio.Lock
    refusal: Refusal | None = None
    observed_generation: int | None = None
    last_warning: str | None = None
    scaling: _Scaling | None = None
    autoscale: dict[str, Any] | None = None
    rack_binding: bool | None = None
    """Whether the rack ClusterRoleBinding may exist (None: not known yet)."""


def _state(memo: kopf.Memo) -> _State:
    if "broker" not in memo:
        memo.broker = _State(asyncio.Lock())
    state: _State = memo.broker
    return state


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(
    body: kopf.Body,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    name: str,
    namespace: str,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    state = _state(memo)
    async with state.lock:
        state.observed_generation = meta.get("generation")
        await _round(body, spec, status, name, namespace, memo.settings, state)


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def watch_status(
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    name: str,
    namespace: str,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    settings: OperatorSettings = memo.settings
    state = _state(memo)
    while not stopped:
        await stopped.wait(settings.status_interval)
        if stopped:
            break
        async with state.lock:
            # A failure was said in a Warning event already; the next round tries again.
            with contextlib.suppress(kopf.TemporaryError):
                await _round(body, spec, status, name, namespace, settings, state)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
async def forget(name: str, namespace: str, logger: kopf.Logger, **_: Any) -> None:
    """The namespaced objects go with the Broker (owner references); the cluster-scoped
    rack binding and the metrics are removed here."""
    metrics.forget_broker(namespace, name)
    metrics.untrack(KIND, namespace, name)
    try:
        await asyncio.to_thread(_delete_rack_binding, name, namespace)
    except ApiException as error:
        logger.warning(
            "cannot delete ClusterRoleBinding %s: %s",
            rack_binding_name(name, namespace),
            error.reason,
        )


# --- one round: observe, apply, take the next scaling step, report ---------------------


@dataclass
class _Round:
    """What one round read: the StatefulSet, its pods, and the cluster."""

    stateful_set: Any | None
    cluster: ClusterView | None = None
    cluster_error: str | None = None
    reassignments: Mapping[PartitionKey, Reassignment] = field(default_factory=dict)

    @property
    def current(self) -> int | None:
        """Brokers the StatefulSet runs now (None before it exists)."""
        return None if self.stateful_set is None else int(self.stateful_set.spec.replicas or 0)

    @property
    def ready(self) -> int:
        found = self.stateful_set
        return (found is not None and found.status and found.status.ready_replicas) or 0


async def _round(
    body: kopf.Body,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    name: str,
    namespace: str,
    settings: OperatorSettings,
    state: _State,
) -> None:
    metrics.track(KIND, namespace, name)
    if state.scaling is None:  # after an operator restart: a scale-out may be under way
        state.scaling = _Scaling(phase=(status.get("scaling") or {}).get("phase", IDLE))
    seen = _Round(await _read_stateful_set(body, state, name, namespace))
    reader = None
    if seen.ready:
        reader = ClusterReader(
            bootstrap(name, namespace),
            request_timeout=_CLUSTER_TIMEOUT_S,
            retry_timeout=_CLUSTER_TIMEOUT_S,
        )
    try:
        if reader is not None:
            try:
                seen.cluster = await reader.view()
                seen.reassignments = await reader.list_partition_reassignments()
            except (KafkaRequestError, OSError) as error:
                seen.cluster, seen.cluster_error = None, str(error)
        wanted = await _reconcile_objects(
            body, spec, status, name, namespace, settings, state, seen
        )
        if reader is not None and seen.cluster is not None and state.refusal is None:
            try:
                await _step(body, name, namespace, state, seen, wanted, reader)
            except (KafkaRequestError, OSError) as error:
                _warn_once(body, state, "ScalingStepFailed", f"scaling step failed: {error}")
    finally:
        if reader is not None:
            await reader.close()
    await _publish_status(body, status, name, namespace, state, seen, wanted)


async def _reconcile_objects(
    body: kopf.Body,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    name: str,
    namespace: str,
    settings: OperatorSettings,
    state: _State,
    seen: _Round,
) -> int:
    """Apply the objects with the StatefulSet at the size it may have now; returns the
    brokers wanted (``spec.replicas``, or more when autoscaled)."""
    try:
        parsed = BrokerSpec.parse(spec, settings.broker_image)
        env = broker_env(parsed)
    except InvalidSpec as refused:
        _refuse(body, state, Refusal(refused.reason, refused.message))
        return int(spec.get("replicas", 3))
    wanted = _autoscaled(parsed, status, state, seen.cluster)
    size = _stateful_set_size(body, state, seen, wanted)
    if size is None:
        return wanted
    state.refusal = None
    await _apply(
        body,
        name,
        namespace,
        dataclasses.replace(parsed, replicas=size),
        env,
        settings.rack_cluster_role,
        state,
    )
    return wanted


def _refuse(body: kopf.Body, state: _State, refusal: Refusal) -> None:
    state.refusal = refusal
    metrics.RECONCILIATIONS.labels(KIND, "refused").inc()
    _warn_once(body, state, refusal.reason, f"spec refused, nothing changed: {refusal.message}")


def _autoscaled(
    spec: BrokerSpec, status: Mapping[str, Any], state: _State, cluster: ClusterView | None
) -> int:
    """The brokers wanted: ``spec.replicas``, or more while autoscale finds the brokers
    too loaded; autoscale only adds brokers (a drain is costly, load comes back)."""
    if spec.autoscale is None:
        state.autoscale = None
        return spec.replicas
    earlier = (state.autoscale or status.get("autoscale") or {}).get("replicas", spec.replicas)
    floor = min(max(spec.replicas, int(earlier)), spec.autoscale.max_replicas)
    if cluster is None:
        state.autoscale = {"replicas": floor, "reason": "the cluster did not answer"}
        return floor
    decision = autoscale_replicas(
        floor,
        AutoscaleBounds(
            spec.autoscale.max_replicas,
            spec.autoscale.max_partitions_per_broker,
            spec.autoscale.max_bytes_per_broker,
        ),
        sum(len(p.replicas) for p in cluster.partitions),
        cluster.log_bytes,
    )
    state.autoscale = {"replicas": decision.replicas, "reason": decision.reason}
    return decision.replicas


def _stateful_set_size(body: kopf.Body, state: _State, seen: _Round, wanted: int) -> int | None:
    """How many brokers the StatefulSet may run now; None when a scale-in is refused."""
    scaling = state.scaling or _Scaling()
    current = seen.current
    if current is None or wanted == current:
        return wanted
    if wanted > current:
        added = tuple(range(current, wanted))
        state.scaling = _Scaling(REASSIGNING, "waiting for the new brokers to register", added)
        kopf.info(
            body,
            reason="ScalingOut",
            message=f"adding brokers {_list(added)}; their partitions follow once they register",
        )
        return wanted
    if seen.cluster is None:
        scaling.message = "waiting for the cluster to answer before draining"
        return current
    refusal = scale_in_refusal(seen.cluster.partitions, current, wanted)
    if refusal is not None:
        _refuse(body, state, refusal)
        return None
    leaving = leaving_brokers(current, wanted)
    left = undrained(seen.cluster.partitions, seen.reassignments, leaving)
    if not left:
        kopf.info(
            body,
            reason="ScaledIn",
            message=f"brokers {_list(leaving)} hold no partition and every ISR is full; "
            f"the StatefulSet shrinks from {current} to {wanted}",
        )
        state.scaling = _Scaling(IDLE, f"scaled in to {wanted} brokers", planned=scaling.planned)
        return wanted
    if scaling.phase != DRAINING or scaling.brokers != leaving:
        state.scaling = _Scaling(DRAINING, "draining", leaving)
    return current


async def _step(
    body: kopf.Body,
    name: str,
    namespace: str,
    state: _State,
    seen: _Round,
    wanted: int,
    reader: ClusterReader,
) -> None:
    """The next step of the scaling under way, or of a rolling restart."""
    scaling = state.scaling or _Scaling()
    if scaling.phase == DRAINING:
        await _drain(body, scaling, seen, reader)
    elif scaling.phase == REASSIGNING:
        await _spread_out(body, state, scaling, seen, wanted, reader)
    else:
        await _roll(body, name, namespace, state, seen)


async def _drain(body: kopf.Body, scaling: _Scaling, seen: _Round, reader: ClusterReader) -> None:
    cluster = seen.cluster
    assert cluster is not None
    left = undrained(cluster.partitions, seen.reassignments, scaling.brokers)
    if seen.reassignments:
        scaling.message = f"moving {len(seen.reassignments)} partitions off brokers " + _list(
            scaling.brokers
        )
        return
    staying = [b for b in _placement_brokers(cluster) if b.node_id not in scaling.brokers]
    plan = balance_plan(cluster.partitions, staying)
    if not plan:
        scaling.message = f"waiting for {len(left)} partitions to have every replica in sync"
        return
    await _submit(reader, plan)
    first = not scaling.planned
    scaling.planned |= frozenset(plan)
    scaling.message = f"moving {len(plan)} partitions off brokers {_list(scaling.brokers)}"
    if first:
        kopf.info(
            body,
            reason="Draining",
            message=f"{scaling.message} before the StatefulSet shrinks (throttled reassignments)",
        )


async def _spread_out(
    body: kopf.Body,
    state: _State,
    scaling: _Scaling,
    seen: _Round,
    wanted: int,
    reader: ClusterReader,
) -> None:
    cluster = seen.cluster
    assert cluster is not None
    missing = sorted(set(range(wanted)) - set(cluster.brokers))
    if missing:
        scaling.message = f"waiting for brokers {_list(missing)} to register"
        return
    if seen.reassignments:
        scaling.message = f"moving {len(seen.reassignments)} partitions onto the new brokers"
        return
    plan = balance_plan(cluster.partitions, _placement_brokers(cluster))
    if plan and scaling.plans < _MAX_PLANS:
        await _submit(reader, plan)
        scaling.plans += 1
        scaling.planned |= frozenset(plan)
        scaling.message = f"moving {len(plan)} partitions to spread them over {wanted} brokers"
        kopf.info(body, reason="Reassigning", message=f"{scaling.message} (throttled)")
        return
    await reader.elect_preferred_leaders()
    added = scaling.brokers
    held = {node: sum(node in p.replicas for p in cluster.partitions) for node in added}
    led = {node: sum(p.replicas[:1] == (node,) for p in cluster.partitions) for node in added}
    state.scaling = _Scaling(IDLE, f"scaled out to {wanted} brokers", planned=scaling.planned)
    kopf.info(
        body,
        reason="ScaledOut",
        message=f"{len(scaling.planned)} partitions moved; "
        + ", ".join(
            f"broker {node} holds {held[node]} replicas, preferred leader of {led[node]}"
            for node in added
        ),
    )


async def _submit(reader: ClusterReader, plan: Mapping[PartitionKey, tuple[int, ...]]) -> None:
    by_topic: dict[str, dict[int, tuple[int, ...]]] = {}
    for (topic, partition), replicas in sorted(plan.items()):
        by_topic.setdefault(topic, {})[partition] = replicas
    for topic, targets in by_topic.items():
        await reader.alter_partition_reassignments(topic, targets)


async def _roll(body: kopf.Body, name: str, namespace: str, state: _State, seen: _Round) -> None:
    """Restart the next broker whose pod runs an older template, if the cluster can
    spare it now."""
    stateful_set, cluster = seen.stateful_set, seen.cluster
    assert cluster is not None
    revision = stateful_set.status.update_revision if stateful_set.status else None
    if revision is None:
        return
    pods = await _list_pods(body, state, name, namespace)
    scaling = state.scaling or _Scaling()
    if scaling.revision != revision:
        scaling.revision, scaling.restarted = revision, ()
    if scaling.restarting is not None:
        pod_name, uid = scaling.restarting
        if any(p.metadata.name == pod_name and p.metadata.uid == uid for p in pods):
            return  # not yet replaced
        scaling.restarting = None
    brokers = [
        BrokerPod(
            ordinal=int(p.metadata.name.rsplit("-", 1)[1]),
            updated=(p.metadata.labels or {}).get(_REVISION_LABEL) == revision,
            ready=p.metadata.deletion_timestamp is None and _pod_ready(p),
        )
        for p in pods
    ]
    step = next_restart(brokers, seen.current or 0, seen.cluster, bool(seen.reassignments))
    was_restarting = scaling.phase == RESTARTING
    if not step.pending:
        lagging = sum(not set(p.replicas) <= set(p.isr) for p in cluster.partitions)
        if was_restarting and (lagging or not all(pod.ready for pod in brokers)):
            scaling.message = f"waiting for the last broker restarted to rejoin {lagging} ISRs"
        elif was_restarting:
            kopf.info(
                body,
                reason="RollingRestartDone",
                message=f"brokers {_list(scaling.restarted)} restarted one at a time",
            )
            scaling.phase, scaling.message, scaling.brokers = IDLE, step.message, ()
        return
    scaling.phase, scaling.message, scaling.brokers = RESTARTING, step.message, step.pending
    if step.blocked:
        _warn_once(body, state, "RestartBlocked", step.message)
    if step.broker is None:
        return
    pod_name = f"{name}-{step.broker}"
    pod = next(p for p in pods if p.metadata.name == pod_name)
    try:
        await asyncio.to_thread(client.CoreV1Api().delete_namespaced_pod, pod_name, namespace)
    except ApiException as error:
        raise _api_failure(body, state, f"Pod {pod_name}", error) from None
    scaling.restarting = (pod_name, pod.metadata.uid)
    scaling.restarted = (*scaling.restarted, step.broker)
    controller = " (the controller)" if step.broker == cluster.controller else ""
    kopf.info(
        body,
        reason="RestartingBroker",
        message=f"restarting broker {step.broker}{controller} onto the new pod template; "
        f"{len(step.pending) - 1} more to go",
    )


def _pod_ready(pod: Any) -> bool:
    conditions = (pod.status and pod.status.conditions) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def _placement_brokers(cluster: ClusterView) -> list[PlacementBroker]:
    return [PlacementBroker(node, cluster.racks.get(node)) for node in cluster.brokers]


def _list(nodes: Any) -> str:
    return ", ".join(map(str, nodes))


async def _read_stateful_set(body: kopf.Body, state: _State, name: str, namespace: str) -> Any:
    try:
        return await asyncio.to_thread(
            client.AppsV1Api().read_namespaced_stateful_set, name, namespace
        )
    except ApiException as error:
        if error.status != 404:
            raise _api_failure(body, state, f"StatefulSet {name}", error) from None
        return None


async def _list_pods(body: kopf.Body, state: _State, name: str, namespace: str) -> list[Any]:
    selector = ",".join(f"{key}={value}" for key, value in selector_labels(name).items())
    try:
        found = await asyncio.to_thread(
            client.CoreV1Api().list_namespaced_pod, namespace, label_selector=selector
        )
    except ApiException as error:
        raise _api_failure(body, state, f"pods of {name}", error) from None
    return list(found.items)


# --- objects ---------------------------------------------------------------------------


async def _apply(
    body: kopf.Body,
    name: str,
    namespace: str,
    parsed: BrokerSpec,
    env: Mapping[str, str],
    rack_role: str | None,
    state: _State,
) -> None:
    changed = False
    if parsed.rack_enabled and not rack_role:
        _warn_once(
            body,
            state,
            "RackLookupNotGranted",
            f"rack awareness is on, but the operator has no ClusterRole to let ServiceAccount "
            f"{name} read nodes (BROOK_OPERATOR_RACK_CLUSTER_ROLE); the broker pods cannot "
            "learn their zone unless it is granted by hand",
        )
    secret = cluster_secret(name, namespace, secrets.token_urlsafe(32))
    kopf.append_owner_reference(secret, owner=body)
    try:  # before the StatefulSet: its pods mount it
        outcome = await asyncio.to_thread(_apply_cluster_secret, secret)
    except ApiException as error:
        metrics.RECONCILIATIONS.labels(KIND, "failed").inc()
        raise _api_failure(body, state, f"Secret {secret['metadata']['name']}", error) from None
    changed |= outcome.action != "unchanged"
    _report(body, state, secret, outcome)
    for manifest in manifests(name, namespace, parsed, env, rack_role):
        if "namespace" in manifest["metadata"]:
            kopf.append_owner_reference(manifest, owner=body)
        try:
            outcome = await asyncio.to_thread(_apply_object, manifest)
        except ApiException as error:
            metrics.RECONCILIATIONS.labels(KIND, "failed").inc()
            subject = f"{manifest['kind']} {manifest['metadata']['name']}"
            raise _api_failure(body, state, subject, error) from None
        changed |= outcome.action != "unchanged"
        _report(body, state, manifest, outcome)
    bound = parsed.rack_enabled and rack_role is not None
    if not bound and state.rack_binding is not False:
        try:
            if await asyncio.to_thread(_delete_rack_binding, name, namespace):
                changed = True
                kopf.info(
                    body,
                    reason="Deleted",
                    message=f"ClusterRoleBinding {rack_binding_name(name, namespace)} deleted: "
                    "rack awareness is off",
                )
        except ApiException as error:
            raise _api_failure(body, state, "rack ClusterRoleBinding", error) from None
    state.rack_binding = bound
    metrics.RECONCILIATIONS.labels(KIND, "applied" if changed else "unchanged").inc()


def _delete_rack_binding(name: str, namespace: str) -> bool:
    """Whether there was one to delete."""
    try:
        client.RbacAuthorizationV1Api().delete_cluster_role_binding(
            rack_binding_name(name, namespace)
        )
    except ApiException as error:
        if error.status != 404:
            raise
        return False
    return True


@dataclass(frozen=True)
class _Outcome:
    action: str
    """created, updated, adopted (the cluster secret) or unchanged."""
    live: Mapping[str, Any] | None = None
    """The object as it was before an update."""
    kept: tuple[str, ...] = ()
    """Fields that differ but cannot change on an existing object."""


def _apply_object(manifest: dict[str, Any]) -> _Outcome:
    """Create the object, or patch it where it differs from the manifest."""
    api_class, suffix = _APIS[manifest["kind"]]
    api = api_class()
    name, namespace = manifest["metadata"]["name"], manifest["metadata"].get("namespace")
    # Namespaced objects are read as (name, namespace), cluster-scoped ones by name alone.
    scope, where = ("namespaced_", (namespace,)) if namespace else ("", ())
    try:
        found = getattr(api, f"read_{scope}{suffix}")(name, *where)
    except ApiException as error:
        if error.status != 404:
            raise
        getattr(api, f"create_{scope}{suffix}")(*where, manifest)
        return _Outcome("created")
    live = api.api_client.sanitize_for_serialization(found)
    kept = tuple(immutable_changes(live, manifest))
    if not needs_update(live, manifest):
        return _Outcome("unchanged", live, kept)
    getattr(api, f"patch_{scope}{suffix}")(
        name, *where, update_patch(live, manifest), _content_type=_MERGE_PATCH
    )
    return _Outcome("updated", live, kept)


def _apply_cluster_secret(desired: dict[str, Any]) -> _Outcome:
    """Create the cluster secret with ``desired``'s fresh value, or adopt the one that
    exists (its value kept: see ``adopt_cluster_secret``)."""
    api = client.CoreV1Api()
    name, namespace = desired["metadata"]["name"], desired["metadata"]["namespace"]
    try:
        found = api.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status != 404:
            raise
        try:
            api.create_namespaced_secret(namespace, desired)
            return _Outcome("created")
        except ApiException as conflict:
            if conflict.status != 409:  # made meanwhile by someone else: adopt it
                raise
            found = api.read_namespaced_secret(name, namespace)
    live = api.api_client.sanitize_for_serialization(found)
    patch = adopt_cluster_secret(live, desired)
    if patch is None:
        return _Outcome("unchanged", live)
    api.patch_namespaced_secret(name, namespace, patch, _content_type=_MERGE_PATCH)
    return _Outcome("adopted", live)


def _report(body: kopf.Body, state: _State, manifest: Mapping[str, Any], outcome: _Outcome) -> None:
    """An event per change: created, updated, scaled; a warning for what cannot change."""
    subject = f"{manifest['kind']} {manifest['metadata']['name']}"
    if outcome.kept:
        _warn_once(
            body,
            state,
            "ImmutableFieldChanged",
            f"{subject}: {', '.join(outcome.kept)} cannot change on an existing "
            f"{manifest['kind']}; the change is not applied",
        )
    if outcome.action == "created":
        kopf.info(body, reason="Created", message=f"{subject} created")
    elif outcome.action == "adopted":
        kopf.info(body, reason="Adopted", message=f"{subject} adopted; a value it held is kept")
    elif outcome.action == "updated":
        before = (outcome.live or {}).get("spec", {}).get("replicas")
        after = manifest.get("spec", {}).get("replicas")
        if manifest["kind"] == "StatefulSet" and before != after:
            kopf.info(
                body,
                reason="Scaled",
                message=f"{subject} scaled from {before} to {after} brokers",
            )
        else:
            kopf.info(body, reason="Updated", message=f"{subject} updated to match the spec")


def _warn_once(body: kopf.Body, state: _State, reason: str, message: str) -> None:
    """A warning event, unless the same one was the last posted for this Broker."""
    if state.last_warning != message:
        state.last_warning = message
        kopf.warn(body, reason=reason, message=message)


def _api_failure(
    body: kopf.Body, state: _State, subject: str, error: ApiException
) -> kopf.TemporaryError:
    """A refused API request: a Warning event, and the error that retries the handler."""
    detail = str(error.body or "").strip()[:300]
    message = f"{subject}: {error.status} {error.reason}: {detail}"
    _warn_once(body, state, "ApiRequestFailed", message)
    return kopf.TemporaryError(message, delay=_API_RETRY_DELAY_S)


# --- status ----------------------------------------------------------------------------


async def _publish_status(
    body: kopf.Body,
    status: Mapping[str, Any],
    name: str,
    namespace: str,
    state: _State,
    seen: _Round,
    wanted: int,
) -> None:
    observed = Observed(
        replicas=wanted,
        ready_replicas=seen.ready,
        cluster=seen.cluster,
        cluster_error=seen.cluster_error,
        refusal=state.refusal,
    )
    scaling = state.scaling or _Scaling()
    remaining = sum(key in seen.reassignments for key in scaling.planned)
    if scaling.phase == DRAINING and seen.cluster is not None:
        remaining = len(
            set(undrained(seen.cluster.partitions, seen.reassignments, scaling.brokers))
            & scaling.planned
        )
    new_status = broker_status(
        observed,
        bootstrap=bootstrap(name, namespace),
        observed_generation=state.observed_generation or status.get("observedGeneration"),
        previous=status,
        now=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        scaling={
            "scaling": scaling.report(remaining),
            "rollingRestart": {
                "revision": scaling.revision,
                "restartedBrokers": list(scaling.restarted),
                "pendingBrokers": list(scaling.brokers) if scaling.phase == RESTARTING else [],
            }
            if scaling.revision
            else None,
            "autoscale": state.autoscale,
        },
    )
    ready = new_status["conditions"][0]
    metrics.record_broker_status(
        namespace,
        name,
        ready=ready["status"] == "True",
        ready_brokers=observed.ready_replicas,
        under_replicated=new_status["underReplicatedPartitions"],
        under_min_isr=new_status["underMinIsrPartitions"],
    )
    changes = status_changes(status, new_status)
    if not changes:
        return
    before = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), {})
    if before.get("status", "False") != ready["status"] and state.refusal is None:
        event = kopf.info if ready["status"] == "True" else kopf.warn
        event(body, reason=ready["reason"], message=ready["message"])
    try:
        await asyncio.to_thread(_patch_status, name, namespace, changes)
    except ApiException as error:
        raise _api_failure(body, state, f"status of {KIND} {name}", error) from None


def _patch_status(name: str, namespace: str, changes: Mapping[str, Any]) -> None:
    client.CustomObjectsApi().patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": changes}, _content_type=_MERGE_PATCH
    )

"""Kopf handlers of Broker resources: apply the Broker's objects, keep its status.

Creating, changing or resuming a Broker applies its objects (create what is missing,
patch what differs, leave the rest alone). A daemon per Broker reads its StatefulSet and
its cluster every ``BROOK_OPERATOR_STATUS_INTERVAL`` seconds, puts objects deleted or
changed by hand back, and writes the status when it changed. A refused spec changes
nothing in the cluster: the Ready condition and a Warning event say why.

Changing ``replicas`` scales the StatefulSet as it is: partitions are not yet moved onto
new brokers, nor drained from leaving ones before they go.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from brook_broker.protocol.cluster_client import KafkaRequestError
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import metrics
from .broker_resources import (
    GROUP,
    VERSION,
    BrokerSpec,
    InvalidSpec,
    bootstrap,
    broker_env,
    immutable_changes,
    manifests,
    needs_update,
    update_patch,
)
from .broker_status import Observed, Refusal, broker_status, status_changes
from .cluster_view import read_cluster
from .settings import OperatorSettings

PLURAL = "brokers"
KIND = "Broker"
_MERGE_PATCH = "application/merge-patch+json"
_API_RETRY_DELAY_S = 10.0

_APIS: dict[str, tuple[type, str]] = {
    "ServiceAccount": (client.CoreV1Api, "service_account"),
    "ConfigMap": (client.CoreV1Api, "config_map"),
    "Service": (client.CoreV1Api, "service"),
    "StatefulSet": (client.AppsV1Api, "stateful_set"),
    "PodDisruptionBudget": (client.PolicyV1Api, "pod_disruption_budget"),
}


@dataclass
class _State:
    """What the operator keeps per Broker between handler calls (in Kopf's memo)."""

    lock: asyncio.Lock
    refusal: Refusal | None = None
    observed_generation: int | None = None
    last_warning: str | None = None


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
        await _apply(body, spec, name, namespace, memo.settings, state)
        state.observed_generation = meta.get("generation")
        await _publish_status(body, spec, status, name, namespace, memo.settings, state)


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
            try:
                if state.refusal is None:
                    await _apply(body, spec, name, namespace, settings, state)
                await _publish_status(body, spec, status, name, namespace, settings, state)
            except kopf.TemporaryError:
                pass  # said in a Warning event already; the next round tries again


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
async def forget(name: str, namespace: str, **_: Any) -> None:
    """The objects go with the Broker (owner references); only its metrics stay here."""
    metrics.forget_broker(namespace, name)
    metrics.untrack(KIND, namespace, name)


# --- objects ---------------------------------------------------------------------------


async def _apply(
    body: kopf.Body,
    spec: Mapping[str, Any],
    name: str,
    namespace: str,
    settings: OperatorSettings,
    state: _State,
) -> None:
    metrics.track(KIND, namespace, name)
    try:
        parsed = BrokerSpec.parse(spec, settings.broker_image)
        env = broker_env(parsed)
    except InvalidSpec as refused:
        state.refusal = Refusal(refused.reason, refused.message)
        metrics.RECONCILIATIONS.labels(KIND, "refused").inc()
        _warn_once(body, state, refused.reason, f"spec refused, nothing changed: {refused}")
        return
    state.refusal = None
    changed = False
    for manifest in manifests(name, namespace, parsed, env):
        kopf.append_owner_reference(manifest, owner=body)
        try:
            outcome = await asyncio.to_thread(_apply_object, manifest)
        except ApiException as error:
            metrics.RECONCILIATIONS.labels(KIND, "failed").inc()
            subject = f"{manifest['kind']} {manifest['metadata']['name']}"
            raise _api_failure(body, state, subject, error) from None
        changed |= outcome.action != "unchanged"
        _report(body, state, manifest, outcome)
    metrics.RECONCILIATIONS.labels(KIND, "applied" if changed else "unchanged").inc()


@dataclass(frozen=True)
class _Outcome:
    action: str
    """created, updated or unchanged."""
    live: Mapping[str, Any] | None = None
    """The object as it was before an update."""
    kept: tuple[str, ...] = ()
    """Fields that differ but cannot change on an existing object."""


def _apply_object(manifest: dict[str, Any]) -> _Outcome:
    """Create the object, or patch it where it differs from the manifest."""
    api_class, suffix = _APIS[manifest["kind"]]
    api = api_class()
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    try:
        found = getattr(api, f"read_namespaced_{suffix}")(name, namespace)
    except ApiException as error:
        if error.status != 404:
            raise
        getattr(api, f"create_namespaced_{suffix}")(namespace, manifest)
        return _Outcome("created")
    live = api.api_client.sanitize_for_serialization(found)
    kept = tuple(immutable_changes(live, manifest))
    if not needs_update(live, manifest):
        return _Outcome("unchanged", live, kept)
    getattr(api, f"patch_namespaced_{suffix}")(
        name, namespace, update_patch(live, manifest), _content_type=_MERGE_PATCH
    )
    return _Outcome("updated", live, kept)


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
    elif outcome.action == "updated":
        before = (outcome.live or {}).get("spec", {}).get("replicas")
        after = manifest.get("spec", {}).get("replicas")
        if manifest["kind"] == "StatefulSet" and before != after:
            kopf.info(
                body,
                reason="Scaled",
                message=f"{subject} scaled from {before} to {after} brokers (partitions are "
                "not moved onto new brokers nor drained from leaving ones)",
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
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    name: str,
    namespace: str,
    settings: OperatorSettings,
    state: _State,
) -> None:
    observed = await _observe(body, spec, name, namespace, state)
    new_status = broker_status(
        observed,
        bootstrap=bootstrap(name, namespace),
        observed_generation=state.observed_generation or status.get("observedGeneration"),
        previous=status,
        now=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
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


async def _observe(
    body: kopf.Body, spec: Mapping[str, Any], name: str, namespace: str, state: _State
) -> Observed:
    replicas = spec.get("replicas", 3)
    try:
        stateful_set = await asyncio.to_thread(
            client.AppsV1Api().read_namespaced_stateful_set_status, name, namespace
        )
        ready = (stateful_set.status and stateful_set.status.ready_replicas) or 0
    except ApiException as error:
        if error.status != 404:
            raise _api_failure(body, state, f"StatefulSet {name}", error) from None
        ready = 0
    cluster, cluster_error = None, None
    if ready:
        try:
            cluster = await read_cluster(bootstrap(name, namespace))
        except (KafkaRequestError, OSError) as error:
            cluster_error = str(error)
    return Observed(
        replicas=replicas,
        ready_replicas=ready,
        cluster=cluster,
        cluster_error=cluster_error,
        refusal=state.refusal,
    )

"""Kopf handlers of Broker resources, and the reconciler they run.

Creating, changing or resuming a Broker runs a round of :class:`BrokerReconciler`; so
does a daemon per Broker every ``BROOK_OPERATOR_STATUS_INTERVAL`` seconds. A round
observes (the Broker's objects from Kopf's indexes, its cluster over the Kafka protocol),
applies its objects (creates what is missing, patches what differs, puts back what was
deleted or changed by hand: :mod:`brook_operator.owned_objects`), takes one step of any
scaling or rolling restart, and writes the status when it changed. A refused spec
changes nothing in the cluster: the Ready condition and a Warning event say why.

Scaling never costs data (decisions in :mod:`brook_operator.broker_scaling`): more
replicas scale the StatefulSet first, then, once the new brokers have registered,
partitions are reassigned onto them (throttled) and preferred leaders elected; fewer
replicas, once a second round's view of the cluster allows them too, drain the leaving
brokers first and shrink the StatefulSet only once nothing is on them and every ISR is
full. The pods are replaced ``OnDelete``: the operator restarts them one at a time, only
when the cluster can spare the broker, the controller last.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import kopf
from brook_broker.metadata.placement import PartitionKey, PlacementBroker
from brook_client.cluster_admin import Reassignment
from brook_client.session import KafkaRequestError
from kubernetes.client.exceptions import ApiException

from . import metrics, owned_objects
from .broker_index import BrokerObjects
from .broker_resources import (
    GROUP,
    VERSION,
    BrokerSpec,
    InvalidSpec,
    bootstrap,
    broker_env,
    cluster_secret,
    manifests,
    rack_binding_name,
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
from .resource_index import namespaced
from .settings import OperatorSettings

PLURAL = "brokers"
KIND = "Broker"
_API_RETRY_DELAY_S = 10.0
_CLUSTER_TIMEOUT_S = 5.0
_MAX_PLANS = 3
"""Reassignment rounds of one scale-out: placement converges in one; more means the
layout keeps changing under it (topics created meanwhile), and balance can wait."""

_T = TypeVar("_T")


# --- the cluster, as the controller uses it ----------------------------------------------


class RoundAdmin(Protocol):
    """Every admin call a round makes to its Broker's cluster, over one session."""

    async def view(self) -> ClusterView: ...

    async def list_partition_reassignments(self) -> Mapping[PartitionKey, Reassignment]: ...

    async def alter_partition_reassignments(
        self, name: str, targets: Mapping[int, tuple[int, ...]]
    ) -> None: ...

    async def elect_preferred_leaders(self) -> None: ...


CLUSTER_ERRORS = (KafkaRequestError, OSError)
"""What a cluster that does not answer (or refuses) raises."""


@contextlib.asynccontextmanager
async def cluster_session(name: str, namespace: str) -> AsyncIterator[RoundAdmin]:
    """The one session of a round to the Broker's cluster, through its client Service."""
    reader = ClusterReader(
        bootstrap(name, namespace),
        request_timeout=_CLUSTER_TIMEOUT_S,
        retry_timeout=_CLUSTER_TIMEOUT_S,
    )
    try:
        yield reader
    finally:
        await reader.close()


# --- what the operator keeps per Broker --------------------------------------------------


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
    confirmed: bool = False
    """A scale-in: allowed again by a round after the one that started it. Nothing moves
    before: that round's view may be older than the spec (a topic created just before
    it is in the metadata of one broker before another's)."""

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
    """What the operator keeps per Broker between rounds (in Kopf's memo)."""

    lock: asyncio.Lock
    refusal: Refusal | None = None
    observed_generation: int | None = None
    last_warning: str | None = None
    scaling: _Scaling | None = None
    """None until the first round after an operator start reads the status."""
    autoscale: dict[str, Any] | None = None
    rack_binding: bool | None = None
    """Whether the rack ClusterRoleBinding may exist (None: not known yet)."""


def _state(memo: kopf.Memo) -> _State:
    if "broker" not in memo:
        memo.broker = _State(asyncio.Lock())
    state: _State = memo.broker
    return state


# --- handlers ----------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(
    body: kopf.Body,
    meta: kopf.Meta,
    name: str,
    namespace: str | None,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    state = _state(memo)
    async with state.lock:
        state.observed_generation = meta.get("generation")
        await _reconciler(body, name, namespace, memo.settings, state, kwargs).reconcile()


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def watch_status(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    **kwargs: Any,
) -> None:
    """A round every status interval: Kopf keeps the body and the indexes current."""
    settings: OperatorSettings = memo.settings
    state = _state(memo)
    while not await stopped.wait(settings.status_interval):
        async with state.lock:
            # A failure was said in a Warning event already; the next round tries again.
            with contextlib.suppress(kopf.TemporaryError):
                await _reconciler(body, name, namespace, settings, state, kwargs).reconcile()


def _reconciler(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    settings: OperatorSettings,
    state: _State,
    handler_kwargs: Mapping[str, Any],
) -> BrokerReconciler:
    """This round's reconciler, with the Broker's objects as the indexes hold them now."""
    where = namespaced(namespace)
    objects = BrokerObjects.of(handler_kwargs, where, name)
    return BrokerReconciler(body, name, where, settings, state, objects)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
async def forget(name: str, namespace: str | None, logger: kopf.Logger, **_: Any) -> None:
    """The namespaced objects go with the Broker (owner references); the cluster-scoped
    rack binding and the metrics are removed here."""
    namespace = namespaced(namespace)
    metrics.forget_broker(namespace, name)
    metrics.untrack(KIND, namespace, name)
    try:
        await asyncio.to_thread(owned_objects.delete_rack_binding, name, namespace)
    except ApiException as error:
        logger.warning(
            "cannot delete ClusterRoleBinding %s: %s",
            rack_binding_name(name, namespace),
            error.reason,
        )


# --- one round ---------------------------------------------------------------------------


@dataclass
class _Seen:
    """What a round observed: the StatefulSet (from the index) and the cluster."""

    stateful_set: Mapping[str, Any] | None
    cluster: ClusterView | None = None
    cluster_error: str | None = None
    reassignments: Mapping[PartitionKey, Reassignment] = field(default_factory=dict)

    @property
    def current(self) -> int | None:
        """Brokers the StatefulSet runs now (None before it exists)."""
        if self.stateful_set is None:
            return None
        return int((self.stateful_set.get("spec") or {}).get("replicas") or 0)

    @property
    def ready(self) -> int:
        return int(self._status.get("readyReplicas") or 0)

    @property
    def revision(self) -> str | None:
        """The pod template revision the StatefulSet makes pods of now."""
        revision: str | None = self._status.get("updateRevision")
        return revision

    @property
    def _status(self) -> Mapping[str, Any]:
        return (self.stateful_set or {}).get("status") or {}


class BrokerReconciler:
    """One round for one Broker: :meth:`reconcile` is the whole of it, in order."""

    def __init__(
        self,
        body: kopf.Body,
        name: str,
        namespace: str,
        settings: OperatorSettings,
        state: _State,
        objects: BrokerObjects,
    ) -> None:
        self.body, self.name, self.namespace = body, name, namespace
        self.settings, self.state, self.objects = settings, state, objects
        self.spec: Mapping[str, Any] = copy.deepcopy(dict(body.spec))
        """The spec as the round starts. The daemon's body is live: a spec changed while
        the round observes its cluster would otherwise be decided on a view older than
        itself (a scale-in drained before the round could see the topic that forbids it).
        The next round takes it, with the cluster as it is then."""

    async def reconcile(self) -> None:
        """Observe, apply the owned objects, take one scaling or rolling step, report."""
        metrics.track(KIND, self.namespace, self.name)
        seen = _Seen(self.objects.get("StatefulSet", self.name))
        async with self.cluster_once_ready(seen) as admin:
            await self.observe_cluster(seen, admin)
            wanted = await self.apply_owned_objects(seen)
            await self.step(seen, wanted, admin)
        await self.publish_status(seen, wanted)

    @property
    def scaling(self) -> _Scaling:
        """Where scaling stands; after an operator restart, the phase the status reported
        last (a scale-out may be under way)."""
        if self.state.scaling is None:
            phase = (self.body.status.get("scaling") or {}).get("phase", IDLE)
            self.state.scaling = _Scaling(phase=phase)
        return self.state.scaling

    # --- observe ---

    @contextlib.asynccontextmanager
    async def cluster_once_ready(self, seen: _Seen) -> AsyncIterator[RoundAdmin | None]:
        """The round's session to the cluster; None while no broker is ready."""
        if not seen.ready:
            yield None
            return
        async with cluster_session(self.name, self.namespace) as admin:
            yield admin

    async def observe_cluster(self, seen: _Seen, admin: RoundAdmin | None) -> None:
        if admin is None:
            return
        try:
            seen.cluster = await admin.view()
            seen.reassignments = await admin.list_partition_reassignments()
        except CLUSTER_ERRORS as error:
            seen.cluster, seen.cluster_error = None, str(error)

    # --- apply the owned objects ---

    async def apply_owned_objects(self, seen: _Seen) -> int:
        """Apply the objects with the StatefulSet at the size it may have now; returns the
        brokers wanted (``spec.replicas``, or more when autoscaled)."""
        spec = self.spec
        try:
            parsed = BrokerSpec.parse(spec, self.settings.broker_image)
            env = broker_env(parsed)
        except InvalidSpec as refused:
            self._refuse(Refusal(refused.reason, refused.message))
            return int(spec.get("replicas", 3))
        wanted = self._autoscaled(parsed, seen.cluster)
        size = self._stateful_set_size(seen, wanted)
        if size is None:
            return wanted
        self.state.refusal = None
        try:
            changed = await self._apply(dataclasses.replace(parsed, replicas=size), env)
        except kopf.TemporaryError:
            metrics.RECONCILIATIONS.labels(KIND, "failed").inc()
            raise
        metrics.RECONCILIATIONS.labels(KIND, "applied" if changed else "unchanged").inc()
        return wanted

    def _autoscaled(self, spec: BrokerSpec, cluster: ClusterView | None) -> int:
        """The brokers wanted: ``spec.replicas``, or more while autoscale finds the brokers
        too loaded; autoscale only adds brokers (a drain is costly, load comes back)."""
        state = self.state
        if spec.autoscale is None:
            state.autoscale = None
            return spec.replicas
        earlier = (state.autoscale or self.body.status.get("autoscale") or {}).get(
            "replicas", spec.replicas
        )
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

    def _stateful_set_size(self, seen: _Seen, wanted: int) -> int | None:
        """How many brokers the StatefulSet may run now; None when a scale-in is refused."""
        scaling, current = self.scaling, seen.current
        if current is None or wanted == current:
            if scaling.phase == DRAINING:  # the leaving brokers are gone, or stay after all
                gone = current is not None and min(scaling.brokers, default=0) >= current
                message = f"scaled in to {wanted} brokers" if gone else "scale-in called off"
                self.state.scaling = _Scaling(IDLE, message, planned=scaling.planned)
            return wanted
        if wanted > current:
            added = tuple(range(current, wanted))
            self.state.scaling = _Scaling(
                REASSIGNING, "waiting for the new brokers to register", added
            )
            self._info(
                "ScalingOut",
                f"adding brokers {_list(added)}; their partitions follow once they register",
            )
            return wanted
        if seen.cluster is None:
            scaling.message = "waiting for the cluster to answer before draining"
            return current
        refusal = scale_in_refusal(seen.cluster.partitions, current, wanted)
        if refusal is not None:
            self._refuse(refusal)
            return None
        leaving = leaving_brokers(current, wanted)
        if scaling.phase != DRAINING or scaling.brokers != leaving:
            self.state.scaling = _Scaling(DRAINING, "checking the scale-in again", leaving)
            return current
        scaling.confirmed = True
        left = undrained(seen.cluster.partitions, seen.reassignments, leaving)
        if not left:
            self._info(
                "ScaledIn",
                f"brokers {_list(leaving)} hold no partition and every ISR is full; "
                f"the StatefulSet shrinks from {current} to {wanted}",
            )
            self.state.scaling = _Scaling(
                IDLE, f"scaled in to {wanted} brokers", planned=scaling.planned
            )
            return wanted
        return current

    async def _apply(self, spec: BrokerSpec, env: Mapping[str, str]) -> bool:
        """Apply every object of ``spec``; whether any changed."""
        name, namespace, rack_role = self.name, self.namespace, self.settings.rack_cluster_role
        if spec.rack_enabled and not rack_role:
            self._warn_once(
                "RackLookupNotGranted",
                f"rack awareness is on, but the operator has no ClusterRole to let "
                f"ServiceAccount {name} read nodes (BROOK_OPERATOR_RACK_CLUSTER_ROLE); the "
                "broker pods cannot learn their zone unless it is granted by hand",
            )
        secret = cluster_secret(name, namespace, secrets.token_urlsafe(32))
        kopf.append_owner_reference(secret, owner=self.body)
        # Before the StatefulSet: its pods mount it.
        changed = await self._apply_one(secret, owned_objects.apply_cluster_secret, secret)
        for manifest in manifests(name, namespace, spec, env, rack_role):
            meta = manifest["metadata"]
            if "namespace" in meta:
                kopf.append_owner_reference(manifest, owner=self.body)
            cached = self.objects.get(manifest["kind"], meta["name"])
            changed |= await self._apply_one(manifest, owned_objects.apply_object, manifest, cached)
        bound = spec.rack_enabled and rack_role is not None
        if not bound and self.state.rack_binding is not False:
            deleted = await self._kube(
                "rack ClusterRoleBinding", owned_objects.delete_rack_binding, name, namespace
            )
            if deleted:
                changed = True
                self._info(
                    "Deleted",
                    f"ClusterRoleBinding {rack_binding_name(name, namespace)} deleted: "
                    "rack awareness is off",
                )
        self.state.rack_binding = bound
        return changed

    async def _apply_one(
        self,
        manifest: Mapping[str, Any],
        apply: Callable[..., owned_objects.Outcome],
        *args: Any,
    ) -> bool:
        """Apply one object and post an event per change: created, updated, scaled; a
        warning for what cannot change. Whether it changed."""
        subject = f"{manifest['kind']} {manifest['metadata']['name']}"
        outcome = await self._kube(subject, apply, *args)
        if outcome.kept:
            self._warn_once(
                "ImmutableFieldChanged",
                f"{subject}: {', '.join(outcome.kept)} cannot change on an existing "
                f"{manifest['kind']}; the change is not applied",
            )
        if outcome.action == owned_objects.CREATED:
            self._info("Created", f"{subject} created")
        elif outcome.action == owned_objects.ADOPTED:
            self._info("Adopted", f"{subject} adopted; a value it held is kept")
        elif outcome.action == owned_objects.UPDATED:
            before = (outcome.live or {}).get("spec", {}).get("replicas")
            after = manifest.get("spec", {}).get("replicas")
            if manifest["kind"] == "StatefulSet" and before != after:
                self._info("Scaled", f"{subject} scaled from {before} to {after} brokers")
            else:
                self._info("Updated", f"{subject} updated to match the spec")
        return outcome.action != owned_objects.UNCHANGED

    # --- one scaling or rolling step ---

    async def step(self, seen: _Seen, wanted: int, admin: RoundAdmin | None) -> None:
        """The next step of the scaling under way, or of a rolling restart; none while the
        spec is refused or the cluster does not answer."""
        if admin is None or seen.cluster is None or self.state.refusal is not None:
            return
        try:
            if self.scaling.phase == DRAINING:
                await self._drain(seen, seen.cluster, admin)
            elif self.scaling.phase == REASSIGNING:
                await self._spread_out(seen, seen.cluster, wanted, admin)
            else:
                await self._roll(seen, seen.cluster)
        except CLUSTER_ERRORS as error:
            self._warn_once("ScalingStepFailed", f"scaling step failed: {error}")

    async def _drain(self, seen: _Seen, cluster: ClusterView, admin: RoundAdmin) -> None:
        scaling = self.scaling
        if not scaling.confirmed:
            return
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
        await _submit(admin, plan)
        first = not scaling.planned
        scaling.planned |= frozenset(plan)
        scaling.message = f"moving {len(plan)} partitions off brokers {_list(scaling.brokers)}"
        if first:
            self._info(
                "Draining",
                f"{scaling.message} before the StatefulSet shrinks (throttled reassignments)",
            )

    async def _spread_out(
        self, seen: _Seen, cluster: ClusterView, wanted: int, admin: RoundAdmin
    ) -> None:
        scaling = self.scaling
        missing = sorted(set(range(wanted)) - set(cluster.brokers))
        if missing:
            scaling.message = f"waiting for brokers {_list(missing)} to register"
            return
        if seen.reassignments:
            scaling.message = f"moving {len(seen.reassignments)} partitions onto the new brokers"
            return
        plan = balance_plan(cluster.partitions, _placement_brokers(cluster))
        if plan and scaling.plans < _MAX_PLANS:
            await _submit(admin, plan)
            scaling.plans += 1
            scaling.planned |= frozenset(plan)
            scaling.message = f"moving {len(plan)} partitions to spread them over {wanted} brokers"
            self._info("Reassigning", f"{scaling.message} (throttled)")
            return
        await admin.elect_preferred_leaders()
        added = scaling.brokers
        held = {node: sum(node in p.replicas for p in cluster.partitions) for node in added}
        led = {node: sum(p.replicas[:1] == (node,) for p in cluster.partitions) for node in added}
        self.state.scaling = _Scaling(
            IDLE, f"scaled out to {wanted} brokers", planned=scaling.planned
        )
        self._info(
            "ScaledOut",
            f"{len(scaling.planned)} partitions moved; "
            + ", ".join(
                f"broker {node} holds {held[node]} replicas, preferred leader of {led[node]}"
                for node in added
            ),
        )

    async def _roll(self, seen: _Seen, cluster: ClusterView) -> None:
        """Restart the next broker whose pod runs an older template, if the cluster can
        spare it now."""
        revision = seen.revision
        if revision is None:
            return
        pods, scaling = self.objects.pods, self.scaling
        if scaling.revision != revision:
            scaling.revision, scaling.restarted = revision, ()
        if scaling.restarting is not None:
            if any((p.name, p.uid) == scaling.restarting for p in pods):
                return  # not yet replaced
            scaling.restarting = None
        brokers = [BrokerPod(p.ordinal, p.revision == revision, p.ready) for p in pods]
        step = next_restart(brokers, seen.current or 0, cluster, bool(seen.reassignments))
        was_restarting = scaling.phase == RESTARTING
        if not step.pending:
            lagging = sum(not set(p.replicas) <= set(p.isr) for p in cluster.partitions)
            # A pod the index has not seen again yet is away too, not done.
            ready = {pod.ordinal for pod in brokers if pod.ready}
            away = set(range(seen.current or 0)) - ready
            if was_restarting and (lagging or away):
                scaling.message = f"waiting for the last broker restarted to rejoin {lagging} ISRs"
            elif was_restarting:
                self._info(
                    "RollingRestartDone",
                    f"brokers {_list(scaling.restarted)} restarted one at a time",
                )
                scaling.phase, scaling.message, scaling.brokers = IDLE, step.message, ()
            return
        scaling.phase, scaling.message, scaling.brokers = RESTARTING, step.message, step.pending
        if step.blocked:
            self._warn_once("RestartBlocked", step.message)
        if step.broker is None:
            return
        pod = next(p for p in pods if p.ordinal == step.broker)
        await self._kube(f"Pod {pod.name}", owned_objects.delete_pod, pod.name, self.namespace)
        scaling.restarting = (pod.name, pod.uid)
        scaling.restarted = (*scaling.restarted, step.broker)
        controller = " (the controller)" if step.broker == cluster.controller else ""
        self._info(
            "RestartingBroker",
            f"restarting broker {step.broker}{controller} onto the new pod template; "
            f"{len(step.pending) - 1} more to go",
        )

    # --- status ---

    async def publish_status(self, seen: _Seen, wanted: int) -> None:
        status, state, scaling = self.body.status, self.state, self.scaling
        observed = Observed(
            replicas=wanted,
            ready_replicas=seen.ready,
            cluster=seen.cluster,
            cluster_error=seen.cluster_error,
            refusal=state.refusal,
        )
        remaining = sum(key in seen.reassignments for key in scaling.planned)
        if scaling.phase == DRAINING and seen.cluster is not None:
            remaining = len(
                set(undrained(seen.cluster.partitions, seen.reassignments, scaling.brokers))
                & scaling.planned
            )
        new_status = broker_status(
            observed,
            bootstrap=bootstrap(self.name, self.namespace),
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
            self.namespace,
            self.name,
            ready=ready["status"] == "True",
            ready_brokers=observed.ready_replicas,
            under_replicated=new_status["underReplicatedPartitions"],
            under_min_isr=new_status["underMinIsrPartitions"],
        )
        changes = status_changes(status, new_status)
        if not changes:
            return
        before: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or () if c.get("type") == "Ready"), {}
        )
        if before.get("status", "False") != ready["status"] and state.refusal is None:
            event = kopf.info if ready["status"] == "True" else kopf.warn
            event(self.body, reason=ready["reason"], message=ready["message"])
        await self._kube(
            f"status of {KIND} {self.name}",
            owned_objects.patch_status,
            PLURAL,
            self.name,
            self.namespace,
            changes,
        )

    # --- events and failures ---

    async def _kube(self, subject: str, call: Callable[..., _T], *args: Any) -> _T:
        """A Kubernetes API call in a thread; a refusal is a Warning event and the error
        that retries the handler."""
        try:
            return await asyncio.to_thread(call, *args)
        except ApiException as error:
            detail = str(error.body or "").strip()[:300]
            message = f"{subject}: {error.status} {error.reason}: {detail}"
            self._warn_once("ApiRequestFailed", message)
            raise kopf.TemporaryError(message, delay=_API_RETRY_DELAY_S) from None

    def _refuse(self, refusal: Refusal) -> None:
        self.state.refusal = refusal
        metrics.RECONCILIATIONS.labels(KIND, "refused").inc()
        self._warn_once(refusal.reason, f"spec refused, nothing changed: {refusal.message}")

    def _info(self, reason: str, message: str) -> None:
        kopf.info(self.body, reason=reason, message=message)

    def _warn_once(self, reason: str, message: str) -> None:
        """A warning event, unless the same one was the last posted for this Broker."""
        if self.state.last_warning != message:
            self.state.last_warning = message
            kopf.warn(self.body, reason=reason, message=message)


async def _submit(admin: RoundAdmin, plan: Mapping[PartitionKey, tuple[int, ...]]) -> None:
    by_topic: dict[str, dict[int, tuple[int, ...]]] = {}
    for (topic, partition), replicas in sorted(plan.items()):
        by_topic.setdefault(topic, {})[partition] = replicas
    for topic, targets in by_topic.items():
        await admin.alter_partition_reassignments(topic, targets)


def _placement_brokers(cluster: ClusterView) -> list[PlacementBroker]:
    return [PlacementBroker(node, cluster.racks.get(node)) for node in cluster.brokers]


def _list(nodes: Any) -> str:
    return ", ".join(map(str, nodes))

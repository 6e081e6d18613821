"""Rounds of the Broker controller against a scripted cluster and scripted indexes: a
round decides on one moment (the spec it started with, the cluster it then observed, even
though the daemon's body is live), and a rolling restart is done only once every broker
is back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import kopf
import pytest
from brook_broker.metadata.placement import PartitionKey
from brook_client.cluster_admin import Reassignment
from brook_operator import broker, owned_objects
from brook_operator.broker import BrokerReconciler, _Scaling, _State
from brook_operator.broker_index import BrokerObjects, PodSeen
from brook_operator.broker_resources import BrokerSpec
from brook_operator.broker_scaling import DRAINING, IDLE, RESTARTING
from brook_operator.cluster_view import ClusterView, PartitionView
from brook_operator.settings import OperatorSettings

NAME, NAMESPACE = "kafka", "prod"


class ScriptedAdmin:
    """A cluster whose every partition has each replica in sync."""

    def __init__(self, brokers: int, partition: PartitionView) -> None:
        self.view_read = ClusterView(tuple(range(brokers)), 0, (partition,))
        self.submitted: list[tuple[str, Mapping[int, tuple[int, ...]]]] = []

    async def view(self) -> ClusterView:
        return self.view_read

    async def list_partition_reassignments(self) -> Mapping[PartitionKey, Reassignment]:
        return {}

    async def alter_partition_reassignments(
        self, name: str, targets: Mapping[int, tuple[int, ...]]
    ) -> None:
        self.submitted.append((name, targets))

    async def elect_preferred_leaders(self) -> None:
        pass


def broker_body(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "brook.dev/v1alpha1",
        "kind": "Broker",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "uid": "u-1", "generation": 2},
        "spec": {"replicas": replicas},
        "status": {},
    }


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The reasons of the Events the rounds post; no Kubernetes API is called."""
    posted: list[str] = []

    async def apply(self: BrokerReconciler, spec: BrokerSpec, env: Mapping[str, str]) -> bool:
        posted.append(f"applied {spec.replicas}")
        return False

    monkeypatch.setattr(BrokerReconciler, "_apply", apply)
    monkeypatch.setattr(owned_objects, "patch_status", lambda *args: None)
    monkeypatch.setattr(owned_objects, "delete_pod", lambda *args: posted.append("deleted"))
    monkeypatch.setattr(kopf, "info", lambda body, reason, message: posted.append(reason))
    monkeypatch.setattr(kopf, "warn", lambda body, reason, message: posted.append(reason))
    return posted


def reconciler(
    monkeypatch: pytest.MonkeyPatch,
    raw: dict[str, Any],
    admin: ScriptedAdmin,
    state: _State,
    stateful_set: Mapping[str, Any],
    pods: tuple[PodSeen, ...] = (),
) -> BrokerReconciler:
    @contextlib.asynccontextmanager
    async def session(name: str, namespace: str) -> AsyncIterator[ScriptedAdmin]:
        yield admin

    monkeypatch.setattr(broker, "cluster_session", session)
    return BrokerReconciler(
        kopf.Body(raw),
        NAME,
        NAMESPACE,
        OperatorSettings.from_env({}),
        state,
        BrokerObjects({("StatefulSet", NAME): stateful_set}, pods),
    )


async def test_a_spec_changed_while_the_round_reads_its_cluster_waits_for_the_next_round(
    monkeypatch: pytest.MonkeyPatch, events: list[str]
) -> None:
    raw = broker_body(5)
    admin = ScriptedAdmin(5, PartitionView("orders", 0, 3, (3, 4, 0), (3, 4, 0), 2))
    read = admin.view

    async def view_while_the_spec_changes() -> ClusterView:
        raw["spec"] = {"replicas": 3}  # Kopf updates the daemon's live body meanwhile
        return await read()

    admin.view = view_while_the_spec_changes  # type: ignore[method-assign]
    state = _State(asyncio.Lock())
    stateful_set = {"spec": {"replicas": 5}, "status": {"readyReplicas": 5}}

    await reconciler(monkeypatch, raw, admin, state, stateful_set).reconcile()

    assert "applied 5" in events
    assert admin.submitted == []
    assert state.scaling is not None and state.scaling.phase != DRAINING
    assert "Draining" not in events


async def test_a_rolling_restart_is_not_done_while_a_restarted_pod_is_not_seen_again(
    monkeypatch: pytest.MonkeyPatch, events: list[str]
) -> None:
    admin = ScriptedAdmin(3, PartitionView("orders", 0, 0, (0, 1, 2), (0, 1, 2), 2))
    state = _State(asyncio.Lock())
    state.scaling = _Scaling(RESTARTING, brokers=(2,), revision="r2", restarted=(1, 0, 2))
    stateful_set = {
        "spec": {"replicas": 3},
        "status": {"readyReplicas": 2, "updateRevision": "r2"},
    }
    back = tuple(PodSeen(f"{NAME}-{n}", f"uid-{n}", "r2", ready=True) for n in (0, 1))

    # Pod 2 was deleted and its successor is not in the index yet.
    await reconciler(monkeypatch, broker_body(3), admin, state, stateful_set, back).reconcile()
    assert state.scaling.phase == RESTARTING
    assert "RollingRestartDone" not in events

    again = (*back, PodSeen(f"{NAME}-2", "uid-2b", "r2", ready=True))
    await reconciler(monkeypatch, broker_body(3), admin, state, stateful_set, again).reconcile()
    assert state.scaling.phase == IDLE
    assert "RollingRestartDone" in events
    assert "deleted" not in events


async def test_a_scale_in_moves_nothing_until_a_second_round_allows_it_too(
    monkeypatch: pytest.MonkeyPatch, events: list[str]
) -> None:
    orders = PartitionView("orders", 0, 3, (3, 4, 0), (3, 4, 0), 2)
    wide = PartitionView("wide", 0, 0, (0, 1, 2, 3, 4), (0, 1, 2, 3, 4), 1)
    admin = ScriptedAdmin(5, orders)
    state = _State(asyncio.Lock())
    stateful_set = {"spec": {"replicas": 5}, "status": {"readyReplicas": 5}}

    async def round_seeing(*partitions: PartitionView) -> None:
        admin.view_read = ClusterView((0, 1, 2, 3, 4), 0, partitions)
        await reconciler(monkeypatch, broker_body(3), admin, state, stateful_set).reconcile()

    # The first round's broker does not know the topic made just before the spec changed.
    await round_seeing(orders)
    assert admin.submitted == [] and "Draining" not in events
    await round_seeing(orders, wide)
    assert state.refusal is not None and state.refusal.reason == "ScaleInBelowReplicationFactor"
    assert admin.submitted == [] and "Draining" not in events
    # Once the topic is gone, the scale-in goes ahead: partitions move off brokers 3 and 4.
    await round_seeing(orders)
    assert [topic for topic, _ in admin.submitted] == ["orders"]
    assert "Draining" in events
    assert "applied 3" not in events, "the StatefulSet keeps 5 brokers while they drain"

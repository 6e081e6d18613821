"""Scaling a Broker never costs data: in the emulated cluster, with real brokers, while a
confluent-kafka producer writes numbered records with ``acks=all``, the operator scales
3 → 5 (partitions move onto the new brokers), back 5 → 3 (refused while a topic's
replication factor is 5, then the leaving brokers drained before their pods go), and
rolls the 3 brokers for a config change (one at a time, the controller last, no
partition under min ISR). Every acknowledged record is read back. Last, autoscale adds a
broker once each holds more partitions than its bound allows.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from .cluster import SequenceProducer, check_acknowledged, read_back
from .kube.harness import Kube
from .kube.operated import (
    BROKERS,
    NS,
    bootstrap,
    condition,
    events,
    operated_broker,
    require_root,
)

BROKER = "scaled"
"""A name of its own: the harness's pod names are host names on this machine."""
BOOTSTRAP = bootstrap(BROKER)
READY_TIMEOUT_S = 120.0
SCALING_TIMEOUT_S = 120.0
PARTITIONS = 6
MIN_ISR = 2


@dataclass
class Cluster:
    kube: Kube
    admin: AdminClient


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The emulated cluster, the operator, and a Broker of 3 it has made Ready."""
    require_root()
    with operated_broker(
        tmp_path_factory.mktemp("scaling") / "kube",
        BROKER,
        3,
        operator_env={"BROOK_OPERATOR_STATUS_INTERVAL": "1"},
    ) as kube:
        wait_settled(kube, 3, READY_TIMEOUT_S)
        admin = AdminClient({"bootstrap.servers": BOOTSTRAP, "allow.auto.create.topics": False})
        yield Cluster(kube, admin)


def wait_settled(kube: Kube, replicas: int, timeout: float) -> dict[str, Any]:
    """The Broker once Ready with ``replicas`` brokers, no scaling under way and every
    ISR full."""

    def settled() -> dict[str, Any] | None:
        broker = kube.get(BROKERS, BROKER)
        status = broker.get("status") or {}
        done = (
            condition(broker).get("status") == "True"
            and status.get("readyReplicas") == replicas
            and status.get("underReplicatedPartitions") == 0
            and (status.get("scaling") or {}).get("phase", "Idle") == "Idle"
        )
        return broker if done else None

    return kube.wait_for(settled, timeout, f"Broker {BROKER} settled at {replicas} brokers")


def create_topic(admin: AdminClient, name: str) -> None:
    new = NewTopic(name, PARTITIONS, 3, config={"min.insync.replicas": str(MIN_ISR)})
    admin.create_topics([new])[name].result(timeout=30)


def layout(admin: AdminClient, name: str) -> dict[int, tuple[list[int], int]]:
    """Each partition's replicas (preferred leader first) and leader."""
    topic = admin.list_topics(name, timeout=15).topics[name]
    return {p.id: (list(p.replicas), p.leader) for p in topic.partitions.values()}


def set_replicas(kube: Kube, replicas: int) -> None:
    kube.patch(BROKERS, BROKER, {"spec": {"replicas": replicas}})


def scale_in_refused(kube: Kube, replicas: int, reason: str) -> dict[str, Any]:
    """Asks for ``replicas`` brokers; the Broker once its Ready condition refuses them."""
    set_replicas(kube, replicas)
    return kube.wait_for(
        lambda: condition(b := kube.get(BROKERS, BROKER)).get("reason") == reason and b,
        30,
        f"the scale-in to {replicas} brokers to be refused with {reason}",
    )


def pods(kube: Kube) -> dict[str, dict[str, Any]]:
    found = kube.list("v1/pods", NS, f"app.kubernetes.io/instance={BROKER}")
    return {p["metadata"]["name"]: p for p in found}


def reasons(kube: Kube) -> list[str]:
    return [e["reason"] for e in events(kube, "Broker", BROKER)]


def check_every_ack_is_kept(producer: SequenceProducer, topic: str) -> None:
    assert producer.failed == {}, f"{len(producer.failed)} writes failed, e.g. {producer.failed}"
    assert len(producer.acked) == producer.sent > 0
    check_acknowledged(producer.acked, read_back(BOOTSTRAP, topic, range(PARTITIONS)))


def test_scale_out_and_back_in_under_acks_all_writes(cluster: Cluster) -> None:
    kube, admin = cluster.kube, cluster.admin
    create_topic(admin, "scaling")
    producer = SequenceProducer(BOOTSTRAP, "scaling", range(PARTITIONS))
    producer.run_in_background(per_second=300)
    try:
        time.sleep(2)
        set_replicas(kube, 5)
        broker = wait_settled(kube, 5, SCALING_TIMEOUT_S)
        after_out = layout(admin, "scaling")
        sent_during_out = producer.sent
        assert broker["status"]["scaling"]["progress"]["total"] > 0
        replicas = Counter(node for r, _ in after_out.values() for node in r)
        preferred = Counter(r[0] for r, _ in after_out.values())
        assert replicas[3] >= 3 and replicas[4] >= 3, after_out
        assert preferred[3] >= 1 and preferred[4] >= 1, after_out
        assert max(replicas.values()) - min(replicas.values()) <= 1, after_out
        assert {0, 1, 2, 3, 4} <= {b.id for b in admin.list_topics(timeout=15).brokers.values()}
        kube.wait_for(
            lambda: {leader for _, leader in layout(admin, "scaling").values()} & {3, 4},
            30,
            "brokers 3 or 4 to lead a partition",
        )

        # A topic as wide as 5 brokers holds the scale-in back, with nothing moved,
        # until it is gone.
        admin.create_topics([NewTopic("wide", 1, 5)])["wide"].result(15)
        refused = scale_in_refused(kube, 3, "ScaleInBelowReplicationFactor")
        assert "factor of topics wide (5)" in condition(refused)["message"]
        assert kube.get("apps/v1/statefulsets", BROKER)["spec"]["replicas"] == 5
        assert "Draining" not in reasons(kube)
        assert layout(admin, "scaling") == after_out
        admin.delete_topics(["wide"])["wide"].result(15)
        # The leaving pods stay until drained: sample while the drain runs.
        drained_before_gone = True
        deadline = time.monotonic() + SCALING_TIMEOUT_S
        while {f"{BROKER}-3", f"{BROKER}-4"} & set(pods(kube)):
            assert time.monotonic() < deadline, "brokers 3 and 4 were never removed"
            if kube.get(BROKERS, BROKER)["spec"]["replicas"] == 3:
                stateful_set = kube.get("apps/v1/statefulsets", BROKER)
                if stateful_set["spec"]["replicas"] == 3:
                    on_leaving = [
                        p for p, (r, _) in layout(admin, "scaling").items() if {3, 4} & set(r)
                    ]
                    drained_before_gone &= not on_leaving
            time.sleep(0.2)
        assert drained_before_gone, "the StatefulSet shrank while brokers 3 or 4 held replicas"
        wait_settled(kube, 3, SCALING_TIMEOUT_S)
        after_in = layout(admin, "scaling")
        assert all(set(r) <= {0, 1, 2} and len(r) == 3 for r, _ in after_in.values()), after_in
        time.sleep(1)
    finally:
        producer.stop()
    assert producer.sent > sent_during_out
    check_every_ack_is_kept(producer, "scaling")
    found = reasons(kube)
    for reason in ("ScalingOut", "Reassigning", "ScaledOut", "Draining", "ScaledIn"):
        assert reason in found, found


def test_scale_in_that_would_remove_quorum_voters_changes_nothing(cluster: Cluster) -> None:
    kube = cluster.kube
    before = {name: p["metadata"]["uid"] for name, p in pods(kube).items()}
    try:
        refused = scale_in_refused(kube, 2, "ScaleInRemovesQuorumVoters")
        assert "keep at least 3 brokers" in condition(refused)["message"]
        time.sleep(2)
        assert kube.get("apps/v1/statefulsets", BROKER)["spec"]["replicas"] == 3
        assert {name: p["metadata"]["uid"] for name, p in pods(kube).items()} == before
    finally:
        set_replicas(kube, 3)
    wait_settled(kube, 3, 30)


@dataclass
class Sampler:
    """Samples the cluster's metadata and the broker pods every ~100 ms."""

    admin: AdminClient
    kube: Kube
    topic: str
    smallest_isr: int = 99
    samples: int = 0
    most_pods_away: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                topic = self.admin.list_topics(self.topic, timeout=2).topics[self.topic]
            except Exception:  # a broker stopping mid-request: the next sample tells
                topic = None
            if topic is not None and topic.partitions:
                self.smallest_isr = min(
                    [self.smallest_isr, *(len(p.isrs) for p in topic.partitions.values())]
                )
                self.samples += 1
            ready = [p for p in pods(self.kube).values() if pod_ready(p)]
            self.most_pods_away = max(self.most_pods_away, 3 - len(ready))
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def pod_ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_rolling_restart_keeps_min_isr_and_every_acked_write(cluster: Cluster) -> None:
    kube, admin = cluster.kube, cluster.admin
    create_topic(admin, "rolling")
    uids = {name: p["metadata"]["uid"] for name, p in pods(kube).items()}
    assert len(uids) == 3
    controller = kube.get(BROKERS, BROKER)["status"]["controller"]
    secret = kube.get("v1/secrets", f"{BROKER}-cluster-secret")["data"]
    earlier_events = len(events(kube, "Broker", BROKER))
    producer = SequenceProducer(BOOTSTRAP, "rolling", range(PARTITIONS))
    sampler = Sampler(admin, kube, "rolling")
    producer.run_in_background(per_second=300)
    sampler.start()
    try:
        time.sleep(2)
        kube.patch(BROKERS, BROKER, {"spec": {"config": {"log.retention.ms": "86400000"}}})
        kube.wait_for(
            lambda: (kube.get(BROKERS, BROKER).get("status") or {}).get("rollingRestart"),
            30,
            "the rolling restart to start",
        )

        def rolled() -> bool:
            status = kube.get(BROKERS, BROKER)["status"]
            restart = status.get("rollingRestart") or {}
            return (
                len(restart.get("restartedBrokers") or ()) == 3
                and not restart.get("pendingBrokers")
                and status["scaling"]["phase"] == "Idle"
                and status.get("underReplicatedPartitions") == 0
            )

        kube.wait_for(rolled, SCALING_TIMEOUT_S, "the 3 brokers to be restarted")
        time.sleep(1)
    finally:
        sampler.stop()
        producer.stop()
    check_every_ack_is_kept(producer, "rolling")
    now = {name: p["metadata"]["uid"] for name, p in pods(kube).items()}
    assert set(now) == set(uids) and all(now[n] != uids[n] for n in uids), (uids, now)
    # The cluster secret the operator made is the one all brokers started with since:
    # scaling and rolling never make a new one (restarted brokers could not join).
    assert kube.get("v1/secrets", f"{BROKER}-cluster-secret")["data"] == secret
    assert "Secret scaled-cluster-secret created" in [
        e["message"] for e in events(kube, "Broker", BROKER)
    ]
    restarts = [
        e["message"]
        for e in events(kube, "Broker", BROKER)[earlier_events:]
        if e["reason"] == "RestartingBroker"
    ]
    assert len(restarts) == 3, restarts
    # The controller goes last: no broker is restarted while it is the controller, unless
    # it is the last one. (Under load the controller may also move by itself mid-roll, so
    # the last one restarted need not be the controller any more.)
    assert not any("(the controller)" in message for message in restarts[:-1]), restarts
    print(f"controller {controller} before the roll")
    print(f"roll: {restarts}; {sampler}")
    assert sampler.samples > 20
    assert sampler.smallest_isr >= MIN_ISR, sampler
    assert sampler.most_pods_away <= 1, sampler


def test_autoscale_adds_brokers_while_each_holds_too_many_partitions(cluster: Cluster) -> None:
    kube, admin = cluster.kube, cluster.admin
    topics = admin.list_topics(timeout=15).topics.values()
    partition_replicas = sum(len(p.replicas) for t in topics for p in t.partitions.values())
    # At most a quarter of them per broker: 4 brokers at least, 4 at most.
    bound = partition_replicas // 4
    autoscale = {"enabled": True, "maxReplicas": 4, "maxPartitionsPerBroker": bound}
    kube.patch(BROKERS, BROKER, {"spec": {"autoscale": autoscale}})
    broker = wait_settled(kube, 4, SCALING_TIMEOUT_S)
    assert broker["spec"]["replicas"] == 3
    decision = broker["status"]["autoscale"]
    assert decision["replicas"] == 4, decision
    assert f"at most {bound} per broker" in decision["reason"], decision
    assert "capped at maxReplicas" in decision["reason"], decision
    assert any(3 in replicas for replicas, _ in layout(admin, "scaling").values())

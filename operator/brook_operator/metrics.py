"""The operator's Prometheus metrics, served on ``BROOK_OPERATOR_METRICS_PORT``."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, start_http_server

RECONCILIATIONS = Counter(
    "brook_operator_reconciliations",
    "Reconciliations of a resource, by kind and outcome (applied, unchanged, refused, failed).",
    ["kind", "outcome"],
)
TOPIC_ACTIONS = Counter(
    "brook_operator_topic_actions",
    "Admin actions the Topic controller applied, by action (CreateTopic, GrowPartitions, "
    "AlterConfigs, Reassign, delete).",
    ["action"],
)
PARTITIONS_AUTOSCALED = Counter(
    "brook_operator_topic_partitions_autoscaled",
    "Partitions a Topic's partitionAutoscale policy added to its topic.",
    ["namespace", "topic"],
)
MANAGED_RESOURCES = Gauge(
    "brook_operator_managed_resources",
    "Resources of each kind the operator manages.",
    ["kind"],
)
READY_BROKERS = Gauge(
    "brook_operator_broker_ready_brokers",
    "Ready broker pods of a Broker, at its last status.",
    ["namespace", "name"],
)
UNDER_REPLICATED_PARTITIONS = Gauge(
    "brook_operator_broker_under_replicated_partitions",
    "Partitions whose ISR is smaller than their replicas, at the Broker's last status.",
    ["namespace", "name"],
)
UNDER_MIN_ISR_PARTITIONS = Gauge(
    "brook_operator_broker_under_min_isr_partitions",
    "Partitions whose ISR is below their min.insync.replicas, at the Broker's last status.",
    ["namespace", "name"],
)
BROKER_READY = Gauge(
    "brook_operator_broker_ready",
    "1 while a Broker's Ready condition is True.",
    ["namespace", "name"],
)

_PER_BROKER = (READY_BROKERS, UNDER_REPLICATED_PARTITIONS, UNDER_MIN_ISR_PARTITIONS, BROKER_READY)


def record_broker_status(
    namespace: str,
    name: str,
    *,
    ready: bool,
    ready_brokers: int,
    under_replicated: int | None,
    under_min_isr: int | None,
) -> None:
    """Counts the cluster could not tell (None) are dropped rather than left stale."""
    BROKER_READY.labels(namespace, name).set(1 if ready else 0)
    READY_BROKERS.labels(namespace, name).set(ready_brokers)
    for gauge, value in (
        (UNDER_REPLICATED_PARTITIONS, under_replicated),
        (UNDER_MIN_ISR_PARTITIONS, under_min_isr),
    ):
        if value is None:
            gauge.remove(namespace, name)
        else:
            gauge.labels(namespace, name).set(value)


def forget_broker(namespace: str, name: str) -> None:
    """Drop a deleted Broker's series."""
    for gauge in _PER_BROKER:
        gauge.remove(namespace, name)


_MANAGED: dict[str, set[tuple[str, str]]] = {}


def track(kind: str, namespace: str, name: str) -> None:
    """Count a resource of ``kind`` as managed (once, however often it is reconciled)."""
    managed = _MANAGED.setdefault(kind, set())
    managed.add((namespace, name))
    MANAGED_RESOURCES.labels(kind).set(len(managed))


def untrack(kind: str, namespace: str, name: str) -> None:
    managed = _MANAGED.setdefault(kind, set())
    managed.discard((namespace, name))
    MANAGED_RESOURCES.labels(kind).set(len(managed))


def serve(port: int) -> None:
    """Serve /metrics from a thread of its own (0: not at all)."""
    if port:
        start_http_server(port)


CONSUMER_GROUP_LAG = Gauge(
    "brook_operator_consumer_group_lag",
    "Records a ConsumerGroup's consumer group has yet to consume, per partition, at its "
    "last read (records below the log start are not counted).",
    ["namespace", "name", "topic", "partition"],
)
CONSUMER_GROUP_DESIRED_REPLICAS = Gauge(
    "brook_operator_consumer_group_desired_replicas",
    "The replica count a ConsumerGroup's lag asks for now (bounded by its replica limits and "
    "the partitions with lag), before stabilization windows and cooldown.",
    ["namespace", "name"],
)
CONSUMER_GROUP_STUCK_PARTITIONS = Gauge(
    "brook_operator_consumer_group_stuck_partitions",
    "Partitions with lag whose committed offset has not moved while the group consumes.",
    ["namespace", "name"],
)
CONSUMER_GROUP_SCALE_DECISIONS = Counter(
    "brook_operator_consumer_group_scale_decisions",
    "Replica counts a ConsumerGroup wrote to its target, by direction (up, down) and reason.",
    ["namespace", "name", "direction", "reason"],
)

_GROUP_PARTITIONS: dict[tuple[str, str], set[tuple[str, str]]] = {}


def record_consumer_group(
    namespace: str,
    name: str,
    lags: Mapping[tuple[str, int], int | None],
    desired_replicas: int,
    stuck_partitions: int,
) -> None:
    """Partitions whose lag is unknown (or that are gone) lose their series."""
    known = {
        (topic, str(partition)): lag for (topic, partition), lag in lags.items() if lag is not None
    }
    for topic, partition in _GROUP_PARTITIONS.get((namespace, name), set()) - known.keys():
        CONSUMER_GROUP_LAG.remove(namespace, name, topic, partition)
    for (topic, partition), lag in known.items():
        CONSUMER_GROUP_LAG.labels(namespace, name, topic, partition).set(lag)
    _GROUP_PARTITIONS[(namespace, name)] = set(known)
    CONSUMER_GROUP_DESIRED_REPLICAS.labels(namespace, name).set(desired_replicas)
    CONSUMER_GROUP_STUCK_PARTITIONS.labels(namespace, name).set(stuck_partitions)


def forget_consumer_group(namespace: str, name: str) -> None:
    """Drop a deleted ConsumerGroup's gauges (its decision counts stay, as counters do)."""
    for topic, partition in _GROUP_PARTITIONS.pop((namespace, name), set()):
        CONSUMER_GROUP_LAG.remove(namespace, name, topic, partition)
    for gauge in (CONSUMER_GROUP_DESIRED_REPLICAS, CONSUMER_GROUP_STUCK_PARTITIONS):
        gauge.remove(namespace, name)

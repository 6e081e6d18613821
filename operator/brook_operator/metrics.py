"""The operator's Prometheus metrics, served on ``BROOK_OPERATOR_METRICS_PORT``."""

from __future__ import annotations

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

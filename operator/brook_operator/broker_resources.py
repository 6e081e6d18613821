"""A Broker's Kubernetes objects, from its spec alone: no API calls, no owner references.

The pod contract every broker relies on: the StatefulSet ordinal is the node id, the
first ``min(replicas, 3)`` pods are the metadata quorum's voters (the others observe
it), each pod advertises its stable DNS name under the headless Service, and broker
settings arrive as ``BROOK_*`` variables from the ConfigMap. A change of those settings
changes the pod template's ``brook.dev/config-hash`` annotation: a broker reads its
settings once, at start. The StatefulSet's pods are replaced ``OnDelete``: the operator
restarts them itself, one at a time, when every partition can spare the broker.

Brokers talk to each other (heartbeats, follower fetches, Raft) on an internal listener
that only peers holding the cluster secret may use; the secret is a Secret of the Broker,
mounted read-only into every pod. Its value is random, so it is made once and never
rewritten (``adopt_cluster_secret``): brokers already running hold it.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from brook_broker.metadata.topic_config import (
    BROKER_SETTINGS,
    INT32,
    INT64,
    TOPIC_CONFIGS,
    BrokerSetting,
    ConfigType,
)
from kubernetes.utils.quantity import parse_quantity

GROUP = "brook.dev"
VERSION = "v1alpha1"
KAFKA_PORT = 9092
CONTROLLER_PORT = 9093
HTTP_PORT = 9644
INTERNAL_PORT = 9094
"""Broker-to-broker requests; refused on the client port (9092)."""
CLUSTER_SECRET_KEY = "cluster-secret"
CLUSTER_SECRET_DIR = "/etc/brook/cluster-secret"
CLUSTER_SECRET_MODE = 0o440
"""Readable by the broker's group (the pod's fsGroup), by no one else."""
DATA_DIR = "/var/lib/brook"
MAX_VOTERS = 3
"""Voters of the metadata quorum: three survive one loss; more only slow the quorum down."""
RUN_AS = 10001
DEFAULT_STORAGE = "10Gi"
DEFAULT_TOPOLOGY_KEY = "topology.kubernetes.io/zone"
DEFAULT_REPLICATION_THROTTLE = 50 * 2**20
"""Bytes/s a leader sends to the replicas a reassignment adds: moving partitions onto new
brokers or off leaving ones must not starve the followers already in sync."""
HOSTNAME_KEY = "kubernetes.io/hostname"
CONFIG_HASH_ANNOTATION = f"{GROUP}/config-hash"

OPERATOR_MANAGED = frozenset(
    {"node.id", "broker.id", "log.dirs", "listeners", "advertised.listeners"}
)
"""Settings the operator gives each pod itself (from the pod's ordinal and DNS name)."""

_SETTINGS: dict[str, BrokerSetting] = {setting.name: setting for setting in BROKER_SETTINGS}
_TOPIC_KEYS = {key.broker.name: key for key in TOPIC_CONFIGS.values()}
_BOUNDS = {ConfigType.INT: INT32, ConfigType.SHORT: (-(2**15), 2**15 - 1), ConfigType.LONG: INT64}


class InvalidSpec(ValueError):
    """A spec the operator refuses; ``reason`` is the Ready condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


_parse_quantity: Callable[[str], Any] = parse_quantity
"""Kubernetes' quantity parser, which carries no types."""


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class BrokerSpec:
    """A Broker's spec with the CRD's defaults filled in (an API server without the
    CRD's defaulting, or an older object, may leave them out)."""

    replicas: int
    image: str
    storage_size: str = DEFAULT_STORAGE
    storage_class: str | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, str] = field(default_factory=dict)
    rack_enabled: bool = False
    topology_key: str = DEFAULT_TOPOLOGY_KEY
    max_unavailable: int = 1
    replication_throttle: int = DEFAULT_REPLICATION_THROTTLE
    """Bytes/s; -1 for none."""
    autoscale: Autoscale | None = None
    """None unless enabled."""

    @classmethod
    def parse(cls, spec: Mapping[str, Any], default_image: str) -> BrokerSpec:
        storage = spec.get("storage") or {}
        rack = spec.get("rack") or {}
        budget = spec.get("podDisruptionBudget") or {}
        parsed = cls(
            replicas=spec.get("replicas", 3),
            image=spec.get("image") or default_image,
            storage_size=str(storage.get("size") or DEFAULT_STORAGE),
            storage_class=storage.get("storageClassName") or None,
            resources=dict(spec.get("resources") or {}),
            config={str(k): str(v) for k, v in (spec.get("config") or {}).items()},
            rack_enabled=bool(rack.get("enabled", False)),
            topology_key=rack.get("topologyKey") or DEFAULT_TOPOLOGY_KEY,
            max_unavailable=budget.get("maxUnavailable", 1),
            replication_throttle=spec.get(
                "replicationThrottleBytesPerSecond", DEFAULT_REPLICATION_THROTTLE
            ),
            autoscale=Autoscale.parse(spec.get("autoscale") or {}),
        )
        # The fields hold what the spec said, checked here: the CRD's schema may be older.
        checked: tuple[tuple[str, object], ...] = (
            ("replicas", parsed.replicas),
            ("maxUnavailable", parsed.max_unavailable),
        )
        for name, value in checked:
            if not _whole(value) or value < 0:
                raise InvalidSpec("InvalidSpec", f"{name} must be a whole number, got {value!r}")
        if parsed.replicas < 1:
            raise InvalidSpec("InvalidSpec", "replicas must be at least 1")
        throttle: object = parsed.replication_throttle
        if not _whole(throttle) or throttle < -1:
            raise InvalidSpec(
                "InvalidSpec",
                f"replicationThrottleBytesPerSecond must be -1 (no limit) or a whole number "
                f"of bytes, got {throttle!r}",
            )
        if parsed.autoscale and parsed.autoscale.max_replicas < parsed.replicas:
            raise InvalidSpec(
                "InvalidSpec",
                f"autoscale.maxReplicas {parsed.autoscale.max_replicas} is below replicas "
                f"{parsed.replicas}",
            )
        return parsed


@dataclass(frozen=True)
class Autoscale:
    """``spec.autoscale``: brokers are added (never removed by themselves) while the
    cluster holds more partition replicas or log bytes per broker than allowed."""

    max_replicas: int
    max_partitions_per_broker: int | None = None
    max_bytes_per_broker: int | None = None

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> Autoscale | None:
        if not spec.get("enabled", False):
            return None
        limit = spec.get("maxBytesPerBroker")
        try:
            max_bytes = None if limit is None else int(_parse_quantity(str(limit)))
        except ValueError:
            raise InvalidSpec(
                "InvalidSpec", f"autoscale.maxBytesPerBroker {limit!r} is not a quantity"
            ) from None
        if "maxReplicas" not in spec:
            raise InvalidSpec("InvalidSpec", "autoscale.maxReplicas is required when enabled")
        return cls(
            max_replicas=int(spec["maxReplicas"]),
            max_partitions_per_broker=spec.get("maxPartitionsPerBroker"),
            max_bytes_per_broker=max_bytes,
        )


# --- broker settings -------------------------------------------------------------------


def broker_env(spec: BrokerSpec) -> dict[str, str]:
    """``spec.config`` (Kafka names) as the broker's ``BROOK_*`` variables, values
    normalized; every refused setting is named in one InvalidConfig message."""
    problems: list[str] = []
    env: dict[str, str] = {}
    for name, value in sorted(spec.config.items()):
        setting = _SETTINGS.get(name)
        if setting is None:
            problems.append(f"{name} is not a broker setting Brook knows")
            continue
        if name in OPERATOR_MANAGED:
            problems.append(f"{name} is set by the operator for each broker")
            continue
        try:
            normalized = _check(setting, value)
        except ValueError as error:
            problems.append(f"invalid value {value!r} for {name}: {error}")
            continue
        if setting.attribute is not None:
            env["BROOK_" + setting.attribute.upper()] = normalized
    factor = env.get("BROOK_DEFAULT_REPLICATION_FACTOR")
    if factor is not None and int(factor) > spec.replicas:
        problems.append(
            f"default.replication.factor {factor} is above the {spec.replicas} brokers of "
            "this cluster"
        )
    if problems:
        raise InvalidSpec("InvalidConfig", "; ".join(problems))
    return env


def _check(setting: BrokerSetting, value: str) -> str:
    """The value as the broker reads it; ValueError says what is wrong with it."""
    key = _TOPIC_KEYS.get(setting.name)
    normalized = key.normalize(value) if key is not None else _check_type(setting.type, value)
    if setting.attribute is None and normalized != setting.constant:
        raise ValueError(f"Brook supports only {setting.constant}")
    return normalized


def _check_type(kind: ConfigType, value: str) -> str:
    text = value.strip()
    if kind is ConfigType.BOOLEAN:
        if text.lower() not in ("true", "false"):
            raise ValueError("expected true or false")
        return text.lower()
    if kind in _BOUNDS:
        high = _BOUNDS[kind][1]
        try:
            number = int(text)
        except ValueError:
            raise ValueError(f"not a number of type {kind.name}") from None
        if not 1 <= number <= high:
            raise ValueError(f"expected a number of type {kind.name}, at least 1")
        return str(number)
    return text


# --- names and addresses ---------------------------------------------------------------


def selector_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "brook-broker", "app.kubernetes.io/instance": name}


def labels(name: str) -> dict[str, str]:
    return {
        **selector_labels(name),
        "app.kubernetes.io/managed-by": "brook-operator",
        "app.kubernetes.io/component": "broker",
    }


def headless_service_name(name: str) -> str:
    return f"{name}-brokers"


def config_map_name(name: str) -> str:
    return f"{name}-config"


def cluster_secret_name(name: str) -> str:
    return f"{name}-cluster-secret"


def bootstrap(name: str, namespace: str) -> str:
    """The client Service's address: what clients (and the operator) connect to."""
    return f"{name}.{namespace}.svc.cluster.local:{KAFKA_PORT}"


def pod_host(name: str, namespace: str, ordinal: int) -> str:
    return f"{name}-{ordinal}.{headless_service_name(name)}.{namespace}.svc.cluster.local"


def controller_quorum(name: str, namespace: str, replicas: int) -> str:
    return ",".join(
        f"{ordinal}@{pod_host(name, namespace, ordinal)}:{CONTROLLER_PORT}"
        for ordinal in range(min(replicas, MAX_VOTERS))
    )


def config_hash(env: Mapping[str, str]) -> str:
    text = "\n".join(f"{key}={value}" for key, value in sorted(env.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- the objects -----------------------------------------------------------------------


def manifests(
    name: str,
    namespace: str,
    spec: BrokerSpec,
    env: Mapping[str, str],
    rack_cluster_role: str | None = None,
) -> list[dict[str, Any]]:
    """Every object of a Broker, in the order they are applied. A rack-aware Broker's
    pods read their node (cluster-scoped): with ``rack_cluster_role`` its ServiceAccount
    is bound to that ClusterRole."""
    objects = [service_account(name, namespace)]
    if spec.rack_enabled and rack_cluster_role:
        objects.append(rack_role_binding(name, namespace, rack_cluster_role))
    return [
        *objects,
        config_map(name, namespace, env),
        headless_service(name, namespace),
        client_service(name, namespace),
        stateful_set(name, namespace, spec, env),
        pod_disruption_budget(name, namespace, spec),
    ]


def _metadata(name: str, namespace: str, broker: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels(broker)}


def service_account(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(name, namespace, name),
    }


def rack_binding_name(name: str, namespace: str) -> str:
    """Cluster-wide unique: neither namespaces nor Broker names (DNS labels) hold dots."""
    return f"brook-rack.{namespace}.{name}"


def rack_role_binding(name: str, namespace: str, cluster_role: str) -> dict[str, Any]:
    """Cluster-scoped, so without owner references (a namespaced owner cannot own it):
    the operator deletes it with the Broker or when rack awareness is turned off."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": rack_binding_name(name, namespace), "labels": labels(name)},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": cluster_role,
        },
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }


def config_map(name: str, namespace: str, env: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(config_map_name(name), namespace, name),
        "data": dict(sorted(env.items())),
    }


def headless_service(name: str, namespace: str) -> dict[str, Any]:
    """Gives each pod its DNS name, ready or not: brokers must find the quorum to start."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(headless_service_name(name), namespace, name),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(name),
            "ports": [
                _service_port("kafka", KAFKA_PORT),
                _service_port("controller", CONTROLLER_PORT),
                _service_port("internal", INTERNAL_PORT),
                _service_port("http", HTTP_PORT),
            ],
        },
    }


def client_service(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [_service_port("kafka", KAFKA_PORT)],
        },
    }


def _service_port(port_name: str, port: int) -> dict[str, Any]:
    return {"name": port_name, "port": port, "targetPort": port, "protocol": "TCP"}


def pod_disruption_budget(name: str, namespace: str, spec: BrokerSpec) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(name, namespace, name),
        "spec": {
            "maxUnavailable": spec.max_unavailable,
            "selector": {"matchLabels": selector_labels(name)},
        },
    }


def container_env(name: str, namespace: str, spec: BrokerSpec) -> list[dict[str, Any]]:
    """The pod's own variables; each ``$(VAR)`` names a variable listed before it."""

    def field_ref(variable: str, path: str) -> dict[str, Any]:
        return {"name": variable, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    own_host = f"$(POD_NAME).{headless_service_name(name)}.$(POD_NAMESPACE).svc.cluster.local"
    env = [
        field_ref("POD_NAME", "metadata.name"),
        field_ref("POD_NAMESPACE", "metadata.namespace"),
        field_ref("POD_IP", "status.podIP"),
        {"name": "BROOK_LISTEN", "value": f"$(POD_IP):{KAFKA_PORT}"},
        {"name": "BROOK_HTTP_LISTEN", "value": f"$(POD_IP):{HTTP_PORT}"},
        {"name": "BROOK_CONTROLLER_LISTEN", "value": f"$(POD_IP):{CONTROLLER_PORT}"},
        {"name": "BROOK_INTERNAL_LISTEN", "value": f"$(POD_IP):{INTERNAL_PORT}"},
        {"name": "BROOK_ADVERTISED_LISTENER", "value": f"{own_host}:{KAFKA_PORT}"},
        {"name": "BROOK_INTERNAL_ADVERTISED_LISTENER", "value": f"{own_host}:{INTERNAL_PORT}"},
        {
            "name": "BROOK_CLUSTER_SECRET_FILE",
            "value": f"{CLUSTER_SECRET_DIR}/{CLUSTER_SECRET_KEY}",
        },
        {"name": "BROOK_DATA_DIR", "value": DATA_DIR},
        {
            "name": "BROOK_CONTROLLER_QUORUM",
            "value": controller_quorum(name, namespace, spec.replicas),
        },
        {"name": "BROOK_CLUSTER_ID", "value": f"{namespace}.{name}"},
        {"name": "BROOK_REPLICATION_THROTTLE_BYTES", "value": str(spec.replication_throttle)},
    ]
    if spec.rack_enabled:
        env += [
            field_ref("NODE_NAME", "spec.nodeName"),
            {"name": "BROOK_RACK_TOPOLOGY_KEY", "value": spec.topology_key},
        ]
    return env


def stateful_set(
    name: str, namespace: str, spec: BrokerSpec, env: Mapping[str, str]
) -> dict[str, Any]:
    selector = selector_labels(name)
    spread = [_spread(HOSTNAME_KEY, selector)]
    if spec.rack_enabled:
        spread.append(_spread(spec.topology_key, selector))
    container: dict[str, Any] = {
        "name": "broker",
        "image": spec.image,
        "command": ["sh", "-c", "export BROOK_NODE_ID=${POD_NAME##*-}; exec brook-broker"],
        "env": container_env(name, namespace, spec),
        "envFrom": [{"configMapRef": {"name": config_map_name(name)}}],
        "ports": [
            {"name": "kafka", "containerPort": KAFKA_PORT, "protocol": "TCP"},
            {"name": "controller", "containerPort": CONTROLLER_PORT, "protocol": "TCP"},
            {"name": "internal", "containerPort": INTERNAL_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": HTTP_PORT},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": HTTP_PORT},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "cluster-secret", "mountPath": CLUSTER_SECRET_DIR, "readOnly": True},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.resources:
        container["resources"] = dict(spec.resources)
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage_size}},
    }
    if spec.storage_class:
        claim_spec["storageClassName"] = spec.storage_class
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(name, namespace, name),
        "spec": {
            "replicas": spec.replicas,
            "serviceName": headless_service_name(name),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector},
            "updateStrategy": {"type": "OnDelete"},
            "template": {
                "metadata": {
                    "labels": labels(name),
                    "annotations": {CONFIG_HASH_ANNOTATION: config_hash(env)},
                },
                "spec": {
                    "serviceAccountName": name,
                    # Only the rack lookup reads the API (the pod's node and its labels).
                    "automountServiceAccountToken": spec.rack_enabled,
                    "terminationGracePeriodSeconds": 60,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "cluster-secret",
                            "secret": {
                                "secretName": cluster_secret_name(name),
                                "defaultMode": CLUSTER_SECRET_MODE,
                            },
                        }
                    ],
                    "topologySpreadConstraints": spread,
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "topologyKey": HOSTNAME_KEY,
                                        "labelSelector": {"matchLabels": selector},
                                    },
                                }
                            ]
                        }
                    },
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data", "labels": selector},
                    "spec": claim_spec,
                }
            ],
        },
    }


def _spread(topology_key: str, selector: Mapping[str, str]) -> dict[str, Any]:
    """Soft spreading: a cluster with fewer nodes (or zones) than brokers still runs."""
    return {
        "maxSkew": 1,
        "topologyKey": topology_key,
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": dict(selector)},
    }


def cluster_secret(name: str, namespace: str, value: str) -> dict[str, Any]:
    """The secret the Broker's brokers prove themselves to each other with. Not among
    :func:`manifests`: it is created once (with ``value``), not kept equal to a spec."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(cluster_secret_name(name), namespace, name),
        "type": "Opaque",
        "data": {CLUSTER_SECRET_KEY: base64.b64encode(value.encode()).decode()},
    }


def adopt_cluster_secret(
    live: Mapping[str, Any], desired: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The merge patch that makes an existing cluster secret the Broker's: its owner
    reference and labels added, its value filled in only if it has none. A value it holds
    is never replaced: running brokers know it, and brokers given another could no longer
    reach them. None when there is nothing to add."""
    patch: dict[str, Any] = {}
    meta, wanted = live.get("metadata") or {}, desired["metadata"]
    owners = list(meta.get("ownerReferences") or [])
    known = {owner.get("uid") for owner in owners}
    new = [ref for ref in wanted.get("ownerReferences") or [] if ref.get("uid") not in known]
    if new:
        if any(owner.get("controller") for owner in owners):
            new = [{**ref, "controller": False} for ref in new]
        patch.setdefault("metadata", {})["ownerReferences"] = owners + new
    labels_now = meta.get("labels") or {}
    missing_labels = {k: v for k, v in wanted["labels"].items() if labels_now.get(k) != v}
    if missing_labels:
        patch.setdefault("metadata", {})["labels"] = missing_labels
    if not (live.get("data") or {}).get(CLUSTER_SECRET_KEY):
        patch["data"] = {CLUSTER_SECRET_KEY: desired["data"][CLUSTER_SECRET_KEY]}
    return patch or None


# --- updating existing objects -----------------------------------------------------------

IMMUTABLE_SPEC_FIELDS: dict[str, tuple[str, ...]] = {
    "StatefulSet": ("selector", "serviceName", "podManagementPolicy", "volumeClaimTemplates"),
    "Service": ("clusterIP",),
}
"""Fields the API server refuses to change on an existing object."""


def update_patch(live: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that brings ``live`` to ``desired``: lists are replaced whole,
    fields the server sets or defaults are left alone, immutable fields are left out, and
    ConfigMap keys no longer wanted are removed (null)."""
    patch = copy.deepcopy(dict(desired))
    for key in IMMUTABLE_SPEC_FIELDS.get(desired["kind"], ()):
        patch.get("spec", {}).pop(key, None)
    if desired["kind"] == "ConfigMap":
        gone = set(live.get("data") or {}) - set(desired.get("data") or {})
        patch["data"] = {**patch.get("data", {}), **dict.fromkeys(sorted(gone))}
    return patch


def needs_update(live: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    return not _contains(live, update_patch(live, desired))


def immutable_changes(live: Mapping[str, Any], desired: Mapping[str, Any]) -> list[str]:
    """The immutable fields ``desired`` would change: they can only be reported."""
    live_spec, desired_spec = live.get("spec") or {}, desired.get("spec") or {}
    return [
        f"spec.{key}"
        for key in IMMUTABLE_SPEC_FIELDS.get(desired["kind"], ())
        if key in desired_spec and not _contains(live_spec.get(key), desired_spec[key])
    ]


def _contains(live: Any, wanted: Any) -> bool:
    """Whether ``live`` has every field of ``wanted`` with its value (lists: the same
    length, item by item); fields only ``live`` has are the server's own."""
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(
            _contains(live.get(key), value) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(live, list)
            and len(live) == len(wanted)
            and all(_contains(have, want) for have, want in zip(live, wanted, strict=True))
        )
    return bool(live == wanted)

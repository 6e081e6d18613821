"""The operator's test harness itself: what real clients see of the emulated API server,
and brokers run by the pod runner from a StatefulSet, reachable by their Service names."""

from __future__ import annotations

import base64
import json
import socket
import urllib.request
from typing import Any

import confluent_kafka
import kubernetes
import pytest

from .clients import ConfluentDriver, Message, create_topic
from .kube.harness import Kube

NS = "default"


@pytest.fixture
def core(kube: Kube) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(
        kubernetes.config.new_client_from_config(str(kube.kubeconfig))
    )


@pytest.fixture
def custom(kube: Kube) -> kubernetes.client.CustomObjectsApi:
    client = kubernetes.config.new_client_from_config(str(kube.kubeconfig))
    return kubernetes.client.CustomObjectsApi(client)


def broker_body(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "brook.dev/v1alpha1",
        "kind": "Broker",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_created_objects_get_server_set_fields(core: kubernetes.client.CoreV1Api) -> None:
    created = core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}, "data": {"k": "v"}})
    assert created is not None, "a create must answer 201 with the object"
    assert created.metadata.uid and created.metadata.creation_timestamp is not None
    assert created.metadata.namespace == NS
    second = core.create_namespaced_config_map(NS, {"metadata": {"generateName": "gen-"}})
    assert second.metadata.name.startswith("gen-") and len(second.metadata.name) == 9
    assert int(second.metadata.resource_version) > int(created.metadata.resource_version)

    replaced = core.replace_namespaced_config_map(
        "a", NS, {"metadata": {"name": "a"}, "data": {"k": "w"}}
    )
    assert replaced.data == {"k": "w"} and replaced.metadata.uid == created.metadata.uid

    stale = [
        {
            "op": "test",
            "path": "/metadata/resourceVersion",
            "value": created.metadata.resource_version,
        }
    ]
    with pytest.raises(kubernetes.client.ApiException) as refused:
        core.patch_namespaced_config_map("a", NS, stale)
    assert refused.value.status == 422
    with pytest.raises(kubernetes.client.ApiException) as taken:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}})
    assert taken.value.status == 409


def test_custom_resources_get_defaults_validation_and_generation(
    custom: kubernetes.client.CustomObjectsApi,
) -> None:
    args = ("brook.dev", "v1alpha1", NS, "brokers")
    broker = custom.create_namespaced_custom_object(*args, broker_body("demo"))
    assert broker["spec"]["replicas"] == 3, "the CRD's default is applied"
    assert broker["metadata"]["generation"] == 1
    with pytest.raises(kubernetes.client.ApiException) as refused:
        custom.create_namespaced_custom_object(*args, broker_body("bad", replicas=0))
    assert (
        refused.value.status == 422 and "spec.replicas" in json.loads(refused.value.body)["message"]
    )

    labelled = custom.patch_namespaced_custom_object(
        *args, "demo", {"metadata": {"labels": {"a": "b"}}}
    )
    assert labelled["metadata"]["generation"] == 1, "metadata changes keep the generation"
    with_status = custom.patch_namespaced_custom_object_status(
        *args, "demo", {"status": {"readyReplicas": 2}, "spec": {"replicas": 7}}
    )
    assert with_status["status"] == {"readyReplicas": 2}
    assert with_status["spec"]["replicas"] == 3, "the status subresource ignores the spec"
    assert with_status["metadata"]["generation"] == 1

    scaled = custom.patch_namespaced_custom_object(
        *args, "demo", {"spec": {"replicas": 5}, "status": {"readyReplicas": 0}}
    )
    assert scaled["metadata"]["generation"] == 2
    assert scaled["status"] == {"readyReplicas": 2}, "the main resource ignores the status"


def test_watch_resumes_after_a_resource_version_and_ends_at_its_timeout(
    kube: Kube, core: kubernetes.client.CoreV1Api
) -> None:
    first = core.create_namespaced_config_map(NS, {"metadata": {"name": "first"}})
    core.create_namespaced_config_map(NS, {"metadata": {"name": "second", "labels": {"app": "x"}}})
    core.patch_namespaced_config_map("first", NS, {"data": {"k": "v"}})
    kube.api.bookmark_interval = 0.3
    url = (
        f"{kube.url}/api/v1/namespaces/{NS}/configmaps?watch=true&allowWatchBookmarks=true"
        f"&timeoutSeconds=2&resourceVersion={first.metadata.resource_version}"
    )
    with urllib.request.urlopen(url, timeout=10) as stream:  # returns when the server ends it
        events = [json.loads(line) for line in stream.read().splitlines() if line.strip()]
    changes = [
        (e["type"], e["object"]["metadata"]["name"]) for e in events if e["type"] != "BOOKMARK"
    ]
    assert changes == [("ADDED", "second"), ("MODIFIED", "first")]
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks, "bookmarks were asked for"
    assert int(bookmarks[-1]["object"]["metadata"]["resourceVersion"]) >= int(
        events[1]["object"]["metadata"]["resourceVersion"]
    )

    selected = core.list_namespaced_config_map(NS, label_selector="app in (x, y)")
    assert [item.metadata.name for item in selected.items] == ["second"]
    by_name = core.list_namespaced_config_map(NS, field_selector="metadata.name=first")
    assert [item.metadata.name for item in by_name.items] == ["first"]


def test_finalizers_hold_deletion_and_owners_take_their_dependents(
    kube: Kube, core: kubernetes.client.CoreV1Api
) -> None:
    owner = core.create_namespaced_config_map(NS, {"metadata": {"name": "owner"}})

    def owned_by(obj: Any) -> list[dict[str, Any]]:
        return [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "name": obj.metadata.name,
                "uid": obj.metadata.uid,
            }
        ]

    child = core.create_namespaced_config_map(
        NS, {"metadata": {"name": "child", "ownerReferences": owned_by(owner)}}
    )
    core.create_namespaced_config_map(
        NS,
        {
            "metadata": {
                "name": "grandchild",
                "ownerReferences": owned_by(child),
                "finalizers": ["x/y"],
            }
        },
    )

    core.delete_namespaced_config_map("owner", NS)
    assert kube.find("v1/configmaps", "child") is None, "the dependent goes with its owner"
    held = kube.get("v1/configmaps", "grandchild")
    assert held["metadata"]["deletionTimestamp"], "a finalizer holds the object, marked"
    core.patch_namespaced_config_map("grandchild", NS, {"metadata": {"finalizers": None}})
    assert kube.find("v1/configmaps", "grandchild") is None


# --- brokers run by the pod runner -------------------------------------------------------

BROKER = "demo"
LABELS = {"app.kubernetes.io/name": "brook-broker", "app.kubernetes.io/instance": BROKER}


def broker_manifests(replicas: int = 3) -> list[dict[str, Any]]:
    """The objects the operator makes for a Broker, by the design's pod contract."""
    headless = f"{BROKER}-brokers"

    def field_ref(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    quorum = ",".join(
        f"{i}@{BROKER}-{i}.{headless}.{NS}.svc.cluster.local:9093" for i in range(min(replicas, 3))
    )
    env = [
        field_ref("POD_NAME", "metadata.name"),
        field_ref("POD_NAMESPACE", "metadata.namespace"),
        field_ref("POD_IP", "status.podIP"),
        {"name": "BROOK_LISTEN", "value": "$(POD_IP):9092"},
        {"name": "BROOK_HTTP_LISTEN", "value": "$(POD_IP):9644"},
        {"name": "BROOK_CONTROLLER_LISTEN", "value": "$(POD_IP):9093"},
        {
            "name": "BROOK_ADVERTISED_LISTENER",
            "value": f"$(POD_NAME).{headless}.$(POD_NAMESPACE).svc.cluster.local:9092",
        },
        {"name": "BROOK_DATA_DIR", "value": "/var/lib/brook"},
        {"name": "BROOK_CONTROLLER_QUORUM", "value": quorum},
        {"name": "BROOK_CLUSTER_ID", "value": f"{NS}.{BROKER}"},
    ]
    ports = [
        {"name": "kafka", "port": 9092},
        {"name": "controller", "port": 9093},
        {"name": "http", "port": 9644},
    ]
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{BROKER}-config"},
            "data": {"BROOK_DEFAULT_REPLICATION_FACTOR": "3", "BROOK_MIN_INSYNC_REPLICAS": "2"},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": headless},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": LABELS,
                "ports": ports,
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": BROKER},
            "spec": {
                "selector": LABELS,
                "ports": [{"name": "kafka", "port": 9092, "targetPort": "kafka"}],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": BROKER},
            "spec": {
                "replicas": replicas,
                "serviceName": headless,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": LABELS},
                "template": {
                    "metadata": {"labels": LABELS},
                    "spec": {
                        "terminationGracePeriodSeconds": 10,
                        "containers": [
                            {
                                "name": "broker",
                                "image": "brook-broker:test",
                                "command": [
                                    "sh",
                                    "-c",
                                    "export BROOK_NODE_ID=${POD_NAME##*-}; exec brook-broker",
                                ],
                                "env": env,
                                "envFrom": [{"configMapRef": {"name": f"{BROKER}-config"}}],
                                "ports": [
                                    {"name": "kafka", "containerPort": 9092},
                                    {"name": "controller", "containerPort": 9093},
                                    {"name": "http", "containerPort": 9644},
                                ],
                                "readinessProbe": {
                                    "httpGet": {"path": "/readyz", "port": 9644},
                                    "periodSeconds": 5,
                                },
                                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/brook"}],
                            }
                        ],
                    },
                },
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {"resources": {"requests": {"storage": "1Gi"}}},
                    }
                ],
            },
        },
    ]


def test_stateful_set_of_brokers_serves_clients_and_keeps_data_across_a_pod_restart(
    kube: Kube,
) -> None:
    for manifest in broker_manifests():
        kube.create(manifest)
    selector = ",".join(f"{key}={value}" for key, value in LABELS.items())
    pods = kube.wait_ready_pods(selector, 3, timeout=90)
    assert sorted(p["metadata"]["name"] for p in pods) == [f"{BROKER}-{i}" for i in range(3)]
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
    assert len(set(ips.values())) == 3
    kube.wait_for(
        lambda: (
            kube.get("apps/v1/statefulsets", BROKER).get("status", {}).get("readyReplicas") == 3
        ),
        what="the StatefulSet's status to count 3 ready replicas",
    )
    assert (
        socket.gethostbyname(f"{BROKER}-1.{BROKER}-brokers.{NS}.svc.cluster.local")
        == ips[f"{BROKER}-1"]
    )

    bootstrap = f"{BROKER}.{NS}.svc.cluster.local:9092"
    create_topic(bootstrap, "events", partitions=3, replication_factor=3)
    messages = [Message(i % 3, f"k{i}".encode(), f"v{i}".encode()) for i in range(30)]
    driver = ConfluentDriver()
    deliveries = driver.produce(bootstrap, "events", messages, "none")
    assert all(d.error is None for d in deliveries)
    data_dir = kube.runner.volume_dir(NS, f"data-{BROKER}-1")
    assert (data_dir / "events-0").is_dir(), "the broker's data lives in its claim's directory"

    old_uid = kube.get("v1/pods", f"{BROKER}-1")["metadata"]["uid"]
    kube.delete("v1/pods", f"{BROKER}-1")

    def replaced() -> bool:
        pod = kube.find("v1/pods", f"{BROKER}-1")
        return (
            pod is not None
            and pod["metadata"]["uid"] != old_uid
            and pod["status"].get("podIP") == ips[f"{BROKER}-1"]
        )

    kube.wait_for(replaced, what=f"a new {BROKER}-1 with the same address")
    kube.wait_ready_pods(selector, 3, timeout=60)
    assert (data_dir / "events-0").is_dir()
    consumed = driver.consume(bootstrap, "events", [0, 1, 2], len(messages))
    assert sorted(c.value for c in consumed) == sorted(m.value for m in messages)
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "g"})
    try:
        metadata = consumer.list_topics("events", timeout=10)
        assert {b.id for b in metadata.brokers.values()} == {0, 1, 2}
    finally:
        consumer.close()


def test_pod_runner_restarts_an_exiting_container_and_scales_a_deployment(kube: Kube) -> None:
    labels = {"app": "worker"}
    kube.create(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "worker"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "main",
                                "command": [
                                    "sh",
                                    "-c",
                                    "printenv GREETING; echo expanded $(MY_NAME); sleep 0.3",
                                ],
                                "env": [
                                    {
                                        "name": "MY_NAME",
                                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                    },
                                    {"name": "GREETING", "value": "hello $(MY_NAME) $$(MY_NAME)"},
                                ],
                            }
                        ]
                    },
                },
            },
        }
    )

    def restarted() -> list[dict[str, Any]]:
        pods = kube.list("v1/pods", NS, "app=worker")
        counts = [
            p.get("status", {}).get("containerStatuses", [{}])[0].get("restartCount", 0)
            for p in pods
        ]
        return pods if len(pods) == 2 and min(counts) >= 1 else []

    pods = kube.wait_for(restarted, 30, "both worker pods to be restarted")
    name = pods[0]["metadata"]["name"]
    log = kube.pod_log(name)
    assert f"hello {name} $(MY_NAME)\nexpanded {name}\n" in log, log
    kube.patch("apps/v1/deployments", "worker", {"spec": {"replicas": 1}})
    kube.wait_for(
        lambda: len(kube.list("v1/pods", NS, "app=worker")) == 1, 30, "a scale-down to 1 pod"
    )


def test_a_pod_waits_for_its_secret_then_reads_it_from_a_read_only_volume(kube: Kube) -> None:
    """As a kubelet does: the container starts once the Secret exists; its keys are files
    (``items`` renames them, ``defaultMode`` sets their mode) on a read-only mount, and
    ``secretKeyRef`` gives a key's value as a variable."""
    target = kube.root / "mnt" / "secret"
    script = (
        f"cat {target}/the-file; echo; stat -c %a {target}/the-file; "
        f"ls {target}; echo $TOKEN; touch {target}/new 2>/dev/null || echo read-only; "
        "sleep 60"
    )
    labels = {"app": "reader"}
    kube.create(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "reader"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "main",
                                "command": ["sh", "-c", script],
                                "env": [
                                    {
                                        "name": "TOKEN",
                                        "valueFrom": {
                                            "secretKeyRef": {"name": "creds", "key": "token"}
                                        },
                                    }
                                ],
                                "volumeMounts": [{"name": "creds", "mountPath": str(target)}],
                            }
                        ],
                        "volumes": [
                            {
                                "name": "creds",
                                "secret": {
                                    "secretName": "creds",
                                    "defaultMode": 0o440,
                                    "items": [{"key": "password", "path": "the-file"}],
                                },
                            }
                        ],
                    },
                },
            },
        }
    )

    def waiting() -> dict[str, Any] | None:
        pods = kube.list("v1/pods", NS, "app=reader")
        statuses = pods[0].get("status", {}).get("containerStatuses") if pods else None
        return (statuses[0]["state"].get("waiting") or None) if statuses else None

    state = kube.wait_for(waiting, 30, "the reader pod to wait for its Secret")
    assert state["reason"] == "CreateContainerConfigError"
    assert "creds" in state["message"]
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "data": {
                "password": base64.b64encode(b"hunter2").decode(),
                "token": base64.b64encode(b"t0ken").decode(),
            },
        }
    )
    [pod] = kube.wait_for(
        lambda: [
            p
            for p in kube.list("v1/pods", NS, "app=reader")
            if "read-only" in kube.pod_log(p["metadata"]["name"])
        ],
        30,
        "the reader pod to start and print what it sees",
    )
    log = kube.pod_log(pod["metadata"]["name"])
    assert "hunter2\n440\nthe-file\nt0ken\nread-only" in log, log

"""A kind cluster with Brook installed the way a user installs it: both images built and
loaded, the Helm chart installed, and API clients for the tests."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.support import images

REPOSITORY = Path(__file__).resolve().parents[2]
CLUSTER_NAME = os.environ.get("BROOK_E2E_CLUSTER", "brook-e2e")
KEEP_CLUSTER = os.environ.get("BROOK_E2E_KEEP_CLUSTER") == "1"
TAG = "e2e"
OPERATOR_IMAGE = f"brook-operator:{TAG}"
BROKER_IMAGE = f"brook-broker:{TAG}"
CLIENT_IMAGE = f"brook-e2e-client:{TAG}"
RELEASE = "brook"
OPERATOR_NAMESPACE = "brook-system"
GROUP, VERSION = "brook.dev", "v1alpha1"
ZONE_LABEL, ZONE = "topology.kubernetes.io/zone", "zone-a"

T = TypeVar("T")


def run(command: Sequence[str], timeout: float = 900, env: Mapping[str, str] | None = None) -> str:
    """Run a command, its output shown on failure."""
    result = subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def image_engine() -> images.Engine:
    """The engine the images are built with and loaded into kind from."""
    engine = images.find_engine()
    if engine is None:
        raise RuntimeError("no container engine: neither a Docker engine nor podman")
    return engine


def build_images() -> None:
    """Built by the script CI and users build them with, so kind runs what CI built."""
    images.build_images(image_engine(), TAG, e2e_client=True)


def load_images() -> None:
    """Into kind's nodes: from Docker's store directly, from podman's through an archive.
    podman names its images localhost/NAME, so each is saved under the docker.io/library
    name that the pods' short names resolve to."""
    engine = image_engine()
    env = {**os.environ, **engine.env}
    for image in (BROKER_IMAGE, OPERATOR_IMAGE, CLIENT_IMAGE):
        if engine.name == "docker":
            run(["kind", "load", "docker-image", image, "--name", CLUSTER_NAME])
            continue
        qualified = f"docker.io/library/{image}"
        with tempfile.TemporaryDirectory() as directory:
            archive = Path(directory) / "image.tar"
            run(["podman", "tag", image, qualified], env=env)
            try:
                run(["podman", "save", "--output", str(archive), qualified], env=env)
            finally:
                run(["podman", "untag", qualified, qualified], env=env)
            run(["kind", "load", "image-archive", str(archive), "--name", CLUSTER_NAME])


def create_cluster(kubeconfig: Path) -> None:
    existing = run(["kind", "get", "clusters"]).split()
    if CLUSTER_NAME in existing:
        run(["kind", "delete", "cluster", "--name", CLUSTER_NAME])
    run(
        [
            "kind",
            "create",
            "cluster",
            "--name",
            CLUSTER_NAME,
            "--kubeconfig",
            str(kubeconfig),
            "--wait",
            "120s",
        ]
    )
    load_images()
    # kind's nodes have no zone; rack-aware Brokers read theirs from this label.
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    for node in core.list_node().items:
        core.patch_node(node.metadata.name, {"metadata": {"labels": {ZONE_LABEL: ZONE}}})


def install_chart(kubeconfig: Path) -> None:
    run(
        [
            "helm",
            "install",
            RELEASE,
            str(REPOSITORY / "helm" / "brook-operator"),
            "--kubeconfig",
            str(kubeconfig),
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--set",
            f"image.tag={TAG}",
            "--set",
            "image.pullPolicy=Never",
            "--set",
            f"brokerImage.tag={TAG}",
            "--set",
            "logLevel=INFO",
            "--wait",
            "--timeout",
            "180s",
        ]
    )


def delete_cluster() -> None:
    if not KEEP_CLUSTER:
        run(["kind", "delete", "cluster", "--name", CLUSTER_NAME])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 2) -> T:
    """Poll until ``probe`` returns something truthy; fail naming ``what`` and the last error."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if result := probe():
                return result
        except ApiException as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} ({last_error})")


@dataclass
class Cluster:
    """API access to the kind cluster, in one namespace made for the tests."""

    api: client.ApiClient
    namespace: str

    @classmethod
    def connect(cls, kubeconfig: Path) -> Cluster:
        api = config.new_client_from_config(config_file=str(kubeconfig))
        namespace = f"e2e-{uuid.uuid4().hex[:6]}"
        client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
        return cls(api, namespace)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        plural = manifest["kind"].lower() + "s"
        return self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, manifest
        )

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name
        )

    def patch_spec(self, plural: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name, {"spec": spec}
        )

    def delete(self, plural: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name)

    def exists(self, plural: str, name: str) -> bool:
        try:
            self.get(plural, name)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    def run_client(self, arguments: Sequence[str], timeout: float = 240) -> dict[str, Any]:
        """Run the Kafka client image as a pod in the cluster; its JSON result."""
        return self.client_result(self.start_client(arguments), timeout)

    def start_client(self, arguments: Sequence[str]) -> str:
        """Start the Kafka client image as a pod in the cluster; the pod's name."""
        name = f"client-{uuid.uuid4().hex[:6]}"
        pod = {
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "client",
                        "image": CLIENT_IMAGE,
                        "imagePullPolicy": "Never",
                        "args": list(arguments),
                    }
                ],
            },
        }
        self.core.create_namespaced_pod(self.namespace, pod)
        return name

    def client_result(self, name: str, timeout: float = 240) -> dict[str, Any]:
        """The JSON result of a client pod once it has finished; the pod is deleted."""

        def finished() -> str | None:
            phase = self.core.read_namespaced_pod(name, self.namespace).status.phase
            return phase if phase in ("Succeeded", "Failed") else None

        try:
            phase = wait_for(f"client pod {name} to finish", finished, timeout)
            log = self.core.read_namespaced_pod_log(name, self.namespace)
            assert phase == "Succeeded", f"client pod {name} failed:\n{log}"
            return json.loads(log.strip().splitlines()[-1])
        finally:
            self.core.delete_namespaced_pod(name, self.namespace)

    def close(self) -> None:
        self.core.delete_namespace(self.namespace)
        self.api.close()


def condition(resource: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for entry in resource.get("status", {}).get("conditions", []):
        if entry["type"] == kind:
            return entry
    return None

"""The operator as a user installs it: its Helm chart's objects applied to the harness, and
its Deployment's pod run from the operator image by the pod runner (image mode).

The operator then works as in a cluster: in-cluster configuration from its
ServiceAccount's token, allowed what the chart's RBAC grants, with the chart's settings.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

import yaml

from tests.support.crds import REPOSITORY
from tests.support.images import Images

from ..brokers import free_port
from .harness import Kube

CHART = REPOSITORY / "helm" / "brook-operator"
RELEASE = "brook"
NAMESPACE = "brook-system"
SELECTOR = f"app.kubernetes.io/instance={RELEASE}"
START_TIMEOUT_S = 60.0


def render(values: Mapping[str, str], extra_env: Mapping[str, str]) -> list[dict[str, Any]]:
    """The chart's objects (without its CRDs: the harness has them) for these values."""
    helm = shutil.which("helm")
    if helm is None:
        raise AssertionError("helm is not installed (scripts/setup.sh installs it)")
    arguments = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for key, value in values.items():
        # --set types numbers (the chart's schema wants ports as integers), and strings
        # are never numeric here: tags and repositories have letters.
        arguments += ["--set", f"{key}={value}"]
    for index, (name, value) in enumerate(extra_env.items()):
        arguments += [
            "--set-string",
            f"extraEnv[{index}].name={name}",
            "--set-string",
            f"extraEnv[{index}].value={value}",
        ]
    result = subprocess.run(
        [helm, *arguments], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"helm template failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


class ChartOperator:
    """``start`` installs the chart and waits for the operator's pod; ``stop`` deletes its
    Deployment and waits for the pod to go."""

    def __init__(self, kube: Kube, images: Images, env: Mapping[str, str] | None = None) -> None:
        self.kube = kube
        self.metrics_port = free_port()
        self.health_port = free_port()
        repository, _, tag = images.operator.partition(":")
        broker_repository, _, broker_tag = images.broker.partition(":")
        self.values = {
            "image.repository": repository,
            "image.tag": tag,
            "image.pullPolicy": "Never",
            "brokerImage.repository": broker_repository,
            "brokerImage.tag": broker_tag,
            "logLevel": "INFO",
            # The pod shares this machine's network: ports of its own.
            "metrics.port": str(self.metrics_port),
            "health.port": str(self.health_port),
        }
        self.env = dict(env or {})
        self.pod_name: str | None = None
        self._deployment: str | None = None

    def start(self) -> ChartOperator:
        self.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        for manifest in render(self.values, self.env):
            self.kube.apply(manifest, NAMESPACE)
            if manifest["kind"] == "Deployment":
                self._deployment = manifest["metadata"]["name"]
        [pod] = self.kube.wait_ready_pods(SELECTOR, 1, NAMESPACE, START_TIMEOUT_S)
        self.pod_name = pod["metadata"]["name"]
        return self

    def stop(self) -> None:
        if self._deployment is None:
            return
        self.kube.delete("apps/v1/deployments", self._deployment, NAMESPACE)
        self._deployment = None
        self.kube.wait_for(
            lambda: not self.kube.list("v1/pods", NAMESPACE, SELECTOR),
            START_TIMEOUT_S,
            "the operator's pod to go",
        )

    def log_tail(self, lines: int = 60) -> str:
        if self.pod_name is None:
            return "(the operator's pod never started)"
        return self.kube.pod_log(self.pod_name, NAMESPACE, lines)

"""A Broker cluster that the real operator made in the emulated cluster: what the
operator's scenario tests and the autoscaler bench start from, and how they read the
resources and Events back."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.images import Images

from .chart import ChartOperator
from .harness import Kube
from .operator import OperatorProcess
from .runtimes import ImageRuntime

NS = "default"
CRD_FILES = sorted((Path(__file__).parents[3] / "crds").glob("*.yaml"))
BROKERS = "brook.dev/v1alpha1/brokers"
READY_TIMEOUT_S = 120.0


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the Kubernetes harness needs root (mount namespaces, /etc/hosts)")


def bootstrap(broker: str) -> str:
    """The client Service of a Broker: the bootstrap address its status reports."""
    return f"{broker}.{NS}.svc.cluster.local:9092"


def condition(obj: Mapping[str, Any], kind: str = "Ready") -> dict[str, Any]:
    found = [c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == kind]
    return found[0] if found else {}


def is_ready(broker: Mapping[str, Any]) -> bool:
    return condition(broker).get("status") == "True"


def events(kube: Kube, kind: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
    """The Events posted (about one object), oldest first."""
    about = [
        event
        for event in kube.list("v1/events", NS)
        if kind is None
        or (event["involvedObject"].get("kind") == kind and event["involvedObject"]["name"] == name)
    ]
    return sorted(about, key=lambda event: int(event["metadata"]["resourceVersion"]))


def describe_event(event: Mapping[str, Any]) -> str:
    about = event["involvedObject"]
    return f"{about['kind']}/{about['name']} {event['type']} {event['reason']}: {event['message']}"


@contextmanager
def operated_broker(
    root: Path,
    name: str,
    replicas: int,
    *,
    settled: Callable[[Mapping[str, Any]], bool] = is_ready,
    spec: Mapping[str, Any] | None = None,
    installed: Sequence[Mapping[str, Any]] = (),
    operator_env: Mapping[str, str] | None = None,
    report: bool = True,
    images: Images | None = None,
) -> Iterator[Kube]:
    """The emulated cluster with ``brook-operator`` running and a Broker ``name`` of
    ``replicas`` brokers (and the rest of ``spec``) once ``settled`` holds for it (default:
    Ready); the ``installed`` objects (what the chart would install) exist before it. At
    the end the operator's log, the Events and the pods are printed (for a failing test's
    report, unless ``report`` is off) and everything is stopped.

    With ``images``, every pod runs from its image and the operator is installed by its
    chart (its pod too, from the operator image); else pods and the operator are local
    processes."""
    operator: OperatorProcess | ChartOperator
    if images is None:
        kube = Kube(root, crds=CRD_FILES)
        operator = OperatorProcess(kube, env=dict(operator_env or {}))
    else:
        engine = images.engine
        runtime = ImageRuntime(engine.name, engine.env)
        kube = Kube(root, crds=CRD_FILES, runtime=runtime)
        operator = ChartOperator(kube, images, env=operator_env)
    try:
        kube.start()
        for obj in installed:
            kube.apply(dict(obj))
        operator.start()
        kube.apply(
            {
                "apiVersion": "brook.dev/v1alpha1",
                "kind": "Broker",
                "metadata": {"name": name},
                "spec": {**(spec or {}), "replicas": replicas},
            }
        )
        kube.wait_for(
            lambda: settled(kube.get(BROKERS, name)), READY_TIMEOUT_S, f"Broker {name} to settle"
        )
        yield kube
    finally:
        operator.stop()
        if report:
            print(f"--- log of the operator\n{operator.log_tail(150)}")
        if report and kube.url:
            print("--- events\n" + "\n".join(map(describe_event, events(kube))))
            print(f"--- pods of the harness\n{kube.describe()}")
        kube.stop()

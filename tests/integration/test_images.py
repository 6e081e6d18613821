"""Brook's images, built from this checkout, run as a cluster and a user would run them.

- The operator's whole loop with every pod in a container: the operator installed by its
  Helm chart and run from its image, the brokers from theirs (host network, each pod its
  own address, read-only root, the non-root user, PVC directories as volumes).
- The broker image run as the README says (``docker run --read-only`` with a named
  volume), and broken variants of it that this same check refuses, with what a user sees.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.images import Engine, Images

from . import test_operator
from .brokers import free_port
from .clients import ConfluentDriver, Message
from .kube.chart import NAMESPACE, SELECTOR
from .kube.harness import Kube
from .kube.operated import BROKERS, NS, bootstrap, operated_broker, require_root
from .kube.runtimes import HARNESS_LABEL, ImageRuntime, read_only_root

pytestmark = pytest.mark.slow

BROKER = "imaged"
CHANGE_TIMEOUT_S = 90.0
BROKER_UID = 10001


@dataclass
class ImagedCluster:
    kube: Kube
    images: Images


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, images: Images) -> Iterator[ImagedCluster]:
    require_root()
    started = time.monotonic()
    with operated_broker(
        tmp_path_factory.mktemp("imaged") / "kube",
        BROKER,
        3,
        settled=test_operator.broker_ready,
        operator_env={"BROOK_OPERATOR_STATUS_INTERVAL": "1"},
        images=images,
    ) as kube:
        print(f"Broker Ready {time.monotonic() - started:.1f} s after the chart was applied")
        yield ImagedCluster(kube, images)


def containers(engine: Engine) -> dict[str, dict[str, Any]]:
    """The running containers of this machine, by name, as the engine reports them."""
    listed = engine.run("ps", "--format", "{{.Names}}")
    names = listed.stdout.split()
    if not names:
        return {}
    inspected = engine.run("inspect", *names)
    assert inspected.returncode == 0, inspected.stderr
    return {item["Name"].lstrip("/"): item for item in json.loads(inspected.stdout)}


def container_of(found: dict[str, dict[str, Any]], pod: str) -> dict[str, Any]:
    """The container the pod runner started for ``pod`` (named ``k8s_<c>_<pod>_...``)."""
    [container] = [c for name, c in found.items() if f"_{pod}_" in name]
    return container


def apply_topic(kube: Kube, name: str, **spec: Any) -> None:
    """A Topic of this module's Broker."""
    test_operator.apply_topic(kube, name, cluster=BROKER, **spec)


def test_the_chart_s_operator_and_the_brokers_run_from_their_images(
    cluster: ImagedCluster,
) -> None:
    kube, images = cluster.kube, cluster.images
    [operator_pod] = kube.list("v1/pods", NAMESPACE, SELECTOR)
    broker_pods = kube.list("v1/pods", NS, f"app.kubernetes.io/instance={BROKER}")
    assert sorted(p["metadata"]["name"] for p in broker_pods) == [f"{BROKER}-{i}" for i in range(3)]
    found = containers(images.engine)
    operator = container_of(found, operator_pod["metadata"]["name"])
    assert operator["ImageName"].endswith(images.operator), operator["ImageName"]
    for pod in broker_pods:
        broker = container_of(found, pod["metadata"]["name"])
        assert broker["ImageName"].endswith(images.broker), broker["ImageName"]
        config = broker["HostConfig"]
        assert config["ReadonlyRootfs"] is True
        assert broker["Config"]["User"] == f"{BROKER_UID}:{BROKER_UID}"
        [status] = pod["status"]["containerStatuses"]
        assert status["image"] == images.broker and status["ready"] is True
    # The operator's ServiceAccount is the chart's, allowed what the chart's RBAC grants.
    assert operator_pod["spec"]["serviceAccountName"] == "brook-brook-operator"


def test_a_topic_serves_clients_through_the_status_bootstrap(cluster: ImagedCluster) -> None:
    kube = cluster.kube
    apply_topic(kube, "orders", partitions=6, replicationFactor=3, minInsyncReplicas=2)
    test_operator.wait_topic_ready(kube, "orders", 6)
    address = kube.get(BROKERS, BROKER)["status"]["bootstrap"]
    assert address == bootstrap(BROKER)
    messages = [Message(i % 6, f"k{i}".encode(), f"v{i}".encode()) for i in range(60)]
    driver = ConfluentDriver()
    deliveries = driver.produce(address, "orders", messages, "none", {"acks": "all"})
    assert [d.error for d in deliveries] == [None] * len(messages)
    consumed = driver.consume(address, "orders", range(6), len(messages))
    assert sorted(c.value for c in consumed) == sorted(m.value for m in messages)


def test_a_deleted_broker_pod_comes_back_with_its_data(cluster: ImagedCluster) -> None:
    """One replica per partition: the messages of the restarted broker's partitions can
    only come from its own volume."""
    kube = cluster.kube
    apply_topic(kube, "single", partitions=3, replicationFactor=1, minInsyncReplicas=1)
    test_operator.wait_topic_ready(kube, "single", 3)
    address = bootstrap(BROKER)
    messages = [Message(i % 3, f"k{i}".encode(), f"v{i}".encode()) for i in range(30)]
    driver = ConfluentDriver()
    deliveries = driver.produce(address, "single", messages, "none", {"acks": "all"})
    assert [d.error for d in deliveries] == [None] * len(messages)
    claim = kube.runner.volume_dir(NS, f"data-{BROKER}-1")
    written = sorted(path.name for path in claim.glob("single-*"))
    assert written, (
        f"broker 1 keeps a partition of the topic in its claim: {sorted(claim.iterdir())}"
    )
    assert all(path.stat().st_uid == BROKER_UID for path in claim.glob("single-*/*"))
    before = kube.get("v1/pods", f"{BROKER}-1")

    kube.delete("v1/pods", f"{BROKER}-1")

    def back() -> bool:
        pod = kube.find("v1/pods", f"{BROKER}-1")
        return pod is not None and pod["metadata"]["uid"] != before["metadata"]["uid"]

    kube.wait_for(back, CHANGE_TIMEOUT_S, f"a new {BROKER}-1")
    kube.wait_for(
        lambda: test_operator.broker_ready(kube.get(BROKERS, BROKER)),
        CHANGE_TIMEOUT_S,
        "the Broker Ready again",
    )
    assert sorted(path.name for path in claim.glob("single-*")) == written
    consumed = driver.consume(address, "single", range(3), len(messages))
    assert sorted(c.value for c in consumed) == sorted(m.value for m in messages)


# --- the broker image as the README runs it, and broken variants of it --------------------


def run_as_the_readme_says(engine: Engine, image: str, timeout: float = 60.0) -> str | None:
    """Run ``image`` read-only with a new named volume at the data directory, as the
    README's ``docker run`` does (host network: the ports are free ones of this machine);
    None when it became ready and kcat could produce and consume through it, else what
    went wrong, with the container's output."""
    name = f"brook-readme-{uuid.uuid4().hex[:8]}"
    kafka, http = free_port(), free_port()
    volume = f"{name}-data"
    started = engine.run(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--pull",
        "never",
        *read_only_root(engine.name),
        "--volume",
        f"{volume}:/var/lib/brook",
        "--env",
        f"BROOK_LISTEN=127.0.0.1:{kafka}",
        "--env",
        f"BROOK_HTTP_LISTEN=127.0.0.1:{http}",
        image,
    )
    try:
        if started.returncode != 0:
            return f"the container did not start: {started.stderr.strip()}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = engine.run("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            if state != "true":
                logs = engine.run("logs", name)
                return f"the broker exited:\n{logs.stdout}{logs.stderr}"
            if _ready(http):
                return _kcat_round_trip(kafka)
            time.sleep(0.5)
        return f"not ready within {timeout:.0f} s"
    finally:
        engine.run("rm", "--force", name, timeout=60)
        engine.run("volume", "rm", "--force", volume, timeout=60)


def _ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _kcat_round_trip(kafka_port: int) -> str | None:
    broker = f"127.0.0.1:{kafka_port}"
    produced = subprocess.run(
        ["kcat", "-b", broker, "-t", "readme", "-P", "-X", "allow.auto.create.topics=true"],
        input="hello from the README\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if produced.returncode != 0:
        return f"kcat could not produce: {produced.stderr}"
    consumed = subprocess.run(
        ["kcat", "-b", broker, "-t", "readme", "-C", "-o", "beginning", "-c", "1", "-e"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if consumed.stdout.strip() != "hello from the README":
        return f"kcat consumed {consumed.stdout!r}: {consumed.stderr}"
    return None


def test_the_broker_image_runs_as_the_readme_says(images: Images) -> None:
    assert run_as_the_readme_says(images.engine, images.broker) is None


BROKEN = {
    "without its console script": (
        "RUN rm /usr/local/bin/brook-broker",
        "brook-broker",
    ),
    # The data directory moved off the volume: on a read-only root nothing can make it.
    "with a data directory its user cannot write": (
        "ENV BROOK_DATA_DIR=/srv/brook",
        "/srv/brook",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_a_broken_broker_image_is_refused_with_what_went_wrong(
    images: Images, breakage: str, tmp_path: Path
) -> None:
    """The check above, on images broken as a user would meet them."""
    change, words = BROKEN[breakage]
    broken = f"brook-broker:broken-{uuid.uuid4().hex[:6]}"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {images.broker}\nUSER root\n{change}\nUSER {BROKER_UID}:{BROKER_UID}\n"
    )
    built = images.engine.run(
        "build", "--network", "host", "-t", broken, str(tmp_path), timeout=300
    )
    assert built.returncode == 0, built.stdout + built.stderr
    try:
        problem = run_as_the_readme_says(images.engine, broken)
    finally:
        images.engine.run("rmi", "--force", broken)
    assert problem is not None, f"the image {breakage} passed the check"
    print(f"the image {breakage}: {problem}")
    assert words in problem, problem


def test_containers_of_a_killed_test_run_are_removed_by_the_next(images: Images) -> None:
    """A killed run's containers hold their pods' addresses: the next harness removes
    those whose harness process is gone, and leaves a live one's alone."""
    engine = images.engine
    # No process has pid 999999999 (above the kernel's limit); pid 1 always runs.
    names = {
        f"brook-orphan-{uuid.uuid4().hex[:6]}": "999999999",
        f"brook-alive-{uuid.uuid4().hex[:6]}": "1",
    }
    for name, pid in names.items():
        created = engine.run(
            "create", "--name", name, "--label", f"{HARNESS_LABEL}={pid}", images.broker
        )
        assert created.returncode == 0, created.stderr
    try:
        ImageRuntime(engine.name, engine.env)
        left = engine.run("ps", "--all", "--format", "{{.Names}}").stdout.split()
        orphan, alive = names
        assert orphan not in left and alive in left, left
    finally:
        engine.run("rm", "--force", *names)

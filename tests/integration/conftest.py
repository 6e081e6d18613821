"""Fixtures that run real broker processes on loopback, always stopped at teardown."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.images import Images, build_images, find_engine

from .brokers import BrokerFailed, BrokerProcess
from .cluster import Cluster
from .kube.harness import Kube
from .kube.operated import CRD_FILES, require_root
from .kube.operator import OperatorProcess

StartBroker = Callable[..., BrokerProcess]
StartCluster = Callable[..., Cluster]


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[StartBroker]:
    """Start brokers with extra flags: ``start_broker("--message-max-bytes", "100000")``."""
    started: list[BrokerProcess] = []
    names = itertools.count()

    def start(*extra_args: str) -> BrokerProcess:
        broker = BrokerProcess(tmp_path / f"broker-{next(names)}", extra_args)
        started.append(broker)
        try:
            broker.start()
        except BrokerFailed as error:
            pytest.fail(str(error), pytrace=False)
        return broker

    yield start
    for broker in started:
        broker.stop()
        print(f"--- log of the broker in {broker.directory}\n{broker.log_tail()}")


@pytest.fixture
def broker(start_broker: StartBroker) -> BrokerProcess:
    """One broker with default settings and its own data directory."""
    return start_broker()


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[StartCluster]:
    """Start clusters whose brokers are all voters: ``start_cluster(3, "--rack", "a")``.
    Every broker is stopped at teardown (paused ones are resumed first)."""
    started: list[Cluster] = []
    names = itertools.count()

    def start(size: int = 3, *extra_args: str, **placement: Any) -> Cluster:
        """``placement``: ``hosts`` and ``namespaces`` of the brokers (see ``Cluster``)."""
        cluster = Cluster(tmp_path / f"cluster-{next(names)}", size, extra_args, **placement)
        started.append(cluster)
        try:
            cluster.start()
        except (BrokerFailed, AssertionError) as error:
            pytest.fail(f"{error}\n{cluster.log_tails()}", pytrace=False)
        return cluster

    yield start
    for cluster in started:
        cluster.stop()
        print(cluster.log_tails())


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[Kube]:
    """An emulated cluster with the CRDs of ``crds/``: API server, pod runner, Service
    names (see ``tests/integration/kube``). Pods and proxies are stopped at teardown."""
    require_root()
    harness = Kube(tmp_path / "kube", crds=CRD_FILES)
    try:
        harness.start()
        yield harness
    finally:
        if harness.url:
            print(f"--- pods of the harness\n{harness.describe()}")
        harness.stop()


@pytest.fixture
def operator_process(kube: Kube) -> Iterator[OperatorProcess]:
    """``brook-operator`` running against ``kube``, watching the whole cluster."""
    operator = OperatorProcess(kube)
    try:
        operator.start()
        yield operator
    finally:
        operator.stop()
        print(f"--- log of the operator\n{operator.log_tail()}")


@pytest.fixture(scope="session")
def images() -> Images:
    """The broker and operator images of this checkout, built once per test run with
    ``scripts/build-images.sh``. CI must build them: there, no engine is a failure."""
    engine = find_engine()
    if engine is None:
        reason = "no container engine (docker info fails, podman is not installed)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: scripts/setup.sh installs podman", pytrace=False)
        pytest.skip(reason)
    return build_images(engine, "test")

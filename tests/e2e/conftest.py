"""End-to-end tests need a Docker engine, kind and helm; without them the suite is
skipped, with one line saying why. With them, one kind cluster serves the session: both
images built and loaded, the Helm chart installed."""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import kind

E2E_DIRECTORY = Path(__file__).parent
_SKIPPED = pytest.StashKey[tuple[int, str]]()


@functools.cache
def missing_requirement() -> str | None:
    """Why e2e tests cannot run here, or None when they can."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    try:
        subprocess.run(["docker", "info"], capture_output=True, check=True, timeout=30)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return "no Docker engine is reachable (docker info failed)"
    if shutil.which("kind") is None:
        return "kind is not installed"
    if shutil.which("helm") is None:
        return "helm is not installed (scripts/setup.sh installs it)"
    return None


def _is_e2e(item: pytest.Item) -> bool:
    return E2E_DIRECTORY in item.path.parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e_items = [item for item in items if _is_e2e(item)]
    if not e2e_items or (reason := missing_requirement()) is None:
        return
    config.stash[_SKIPPED] = (len(e2e_items), reason)
    marker = pytest.mark.skip(reason=f"e2e: {reason}")
    for item in e2e_items:
        item.add_marker(marker)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = terminalreporter.config.stash.get(_SKIPPED, None)
    if skipped is not None:
        count, reason = skipped
        terminalreporter.write_line(f"e2e: skipped {count} tests: {reason}")


@pytest.fixture(scope="session")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new kind cluster with Brook's images loaded and its chart installed."""
    path = tmp_path_factory.mktemp("kind") / "kubeconfig"
    kind.build_images()
    try:
        kind.create_cluster(path)
        kind.install_chart(path)
        yield path
    finally:
        kind.delete_cluster()


@pytest.fixture(scope="module")
def cluster(kubeconfig: Path) -> Iterator[kind.Cluster]:
    """The cluster's API, in a namespace of its own that goes away afterwards."""
    connected = kind.Cluster.connect(kubeconfig)
    try:
        yield connected
    finally:
        connected.close()

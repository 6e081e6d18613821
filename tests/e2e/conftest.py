"""End-to-end tests need a Docker engine and kind; without them the suite is skipped,
with one line saying why."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest

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

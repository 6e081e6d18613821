"""Brook's images for tests: built by ``scripts/build-images.sh`` (the script users and the
kind e2e suite build them with), run by the same container engine it picks."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass

from tests.support.crds import REPOSITORY

BUILD_SCRIPT = REPOSITORY / "scripts" / "build-images.sh"
PODMAN_CONF = REPOSITORY / "scripts" / "podman" / "containers.conf"
BUILD_TIMEOUT_S = 1500.0


@dataclass(frozen=True)
class Engine:
    """A container engine and the environment its commands need."""

    name: str
    env: dict[str, str]

    def run(self, *arguments: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.name, *arguments],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@functools.cache
def find_engine() -> Engine | None:
    """Docker when its engine answers, else podman (with the repository's settings for it,
    as the build script uses them), else None."""
    chosen = os.environ.get("BROOK_CONTAINER_ENGINE")
    if chosen in (None, "docker") and shutil.which("docker"):
        answered = subprocess.run(
            ["docker", "info"], capture_output=True, timeout=30, check=False
        ).returncode
        if answered == 0:
            return Engine("docker", {})
    if chosen in (None, "podman") and shutil.which("podman"):
        return Engine(
            "podman", {"CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(PODMAN_CONF))}
        )
    return None


@dataclass(frozen=True)
class Images:
    """The broker and operator images of this checkout, built with ``tag``."""

    engine: Engine
    tag: str

    @property
    def broker(self) -> str:
        return f"brook-broker:{self.tag}"

    @property
    def operator(self) -> str:
        return f"brook-operator:{self.tag}"


def build_images(engine: Engine, tag: str, e2e_client: bool = False) -> Images:
    """Both images (and the e2e suite's client), built from this checkout; the script's
    output shown on failure."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--tag", tag, *(["--e2e-client"] if e2e_client else [])],
        env={**os.environ, "BROOK_CONTAINER_ENGINE": engine.name, **engine.env},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{BUILD_SCRIPT.name} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    print(result.stderr)  # the script's step timings and image sizes, in the test's report
    return Images(engine, tag)

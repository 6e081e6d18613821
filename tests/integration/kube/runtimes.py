"""How the kubelet runs a container: as a local process, or from its image.

The kubelet (:mod:`.pods`) resolves a pod's container into a :class:`Container` (its
command, environment, mounts and security settings, as Kubernetes would hand them to a
container runtime); a runtime turns that into the argv of one process and signals it:

- :class:`ProcessRuntime` (the default, fast): the container's ``command`` runs on this
  machine in a private mount namespace where each volume is bind-mounted at its
  ``mountPath``; it runs as root and ignores the image.
- :class:`ImageRuntime`: ``podman run`` (or ``docker run``) of the container's image with
  the host network (the pod binds its own 127.x address), the volumes mounted, the user,
  group, read-only root and dropped capabilities the manifest asks for, and volumes owned
  by the pod's ``fsGroup`` as a kubelet makes them. ``command`` and ``args`` replace the
  image's entrypoint and arguments as in Kubernetes; without ``command`` the image's
  entrypoint runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

HARNESS_LABEL = "brook-harness-pid"
"""Every container of a harness carries the pid of the process that runs it."""
HOSTS = "/etc/hosts"
"""The harness publishes Service and pod names here, written in place: containers mount
it, so they see names published after they started."""


class ContainerConfigError(Exception):
    """The container cannot start yet (a ConfigMap it needs is missing, no command)."""


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool
    owned_by_fs_group: bool = True
    """A volume the kubelet gives the pod's ``fsGroup`` (not the ServiceAccount's files,
    which are readable by everyone)."""


@dataclass(frozen=True)
class SecurityContext:
    """The pod's and the container's securityContext, merged (the container's wins)."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool = False
    fs_group: int | None = None
    read_only_root: bool = False
    drop_all_capabilities: bool = False
    no_new_privileges: bool = False

    @classmethod
    def of(cls, pod_spec: Mapping[str, Any], container: Mapping[str, Any]) -> SecurityContext:
        pod = dict(pod_spec.get("securityContext") or {})
        own = dict(container.get("securityContext") or {})
        merged = {**pod, **own}

        def number(key: str) -> int | None:
            value = merged.get(key)
            return None if value is None else int(value)

        return cls(
            run_as_user=number("runAsUser"),
            run_as_group=number("runAsGroup"),
            run_as_non_root=bool(merged.get("runAsNonRoot")),
            fs_group=None if pod.get("fsGroup") is None else int(pod["fsGroup"]),
            read_only_root=bool(own.get("readOnlyRootFilesystem")),
            drop_all_capabilities="ALL" in ((own.get("capabilities") or {}).get("drop") or ()),
            no_new_privileges=own.get("allowPrivilegeEscalation") is False,
        )


@dataclass(frozen=True)
class Container:
    """One container of a pod, resolved: what a kubelet hands its container runtime."""

    name: str
    """Unique among this harness's containers (the pod, its uid and the start's number)."""
    image: str
    command: Sequence[str]
    args: Sequence[str]
    env: Mapping[str, str]
    mounts: Sequence[Mount]
    working_dir: str | None = None
    security: SecurityContext = field(default_factory=SecurityContext)


class ContainerRuntime(Protocol):
    def launch(self, container: Container) -> tuple[list[str], dict[str, str]]:
        """The argv and environment of the process that runs ``container``."""
        ...

    async def signal(self, container: Container, pid: int, signum: signal.Signals) -> None:
        """Deliver ``signum`` to the container whose launching process is ``pid``."""
        ...

    async def close(self) -> None:
        """Nothing of the runtime's is left running (called once the pods stopped)."""
        ...


_MOUNT_SCRIPT = (
    'while [ "$1" != -- ]; do mkdir -p "$2" && mount --bind "$1" "$2" || exit 125; '
    'if [ "$3" = ro ]; then mount -o remount,bind,ro "$2" || exit 125; fi; '
    'shift 3; done; shift; exec "$@"'
)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


@dataclass(frozen=True)
class ProcessRuntime:
    """The container's command as a local process (root, this machine's files)."""

    home: Path

    def launch(self, container: Container) -> tuple[list[str], dict[str, str]]:
        if not container.command:
            raise ContainerConfigError(
                f"container {container.name!r} has no command: the process runtime runs "
                "commands, not images"
            )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            **container.env,
        }
        wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _MOUNT_SCRIPT]
        triples = [
            str(part)
            for mount in container.mounts
            for part in (mount.source, mount.target, "ro" if mount.read_only else "rw")
        ]
        return [*wrapper, "mounts", *triples, "--", *container.command, *container.args], env

    async def signal(self, container: Container, pid: int, signum: signal.Signals) -> None:
        signal_group(pid, signum)

    async def close(self) -> None:
        return None


@dataclass
class ImageRuntime:
    """Containers from their images, run by a container engine (podman or docker)."""

    engine: str
    """``podman`` or ``docker``."""
    engine_env: Mapping[str, str]
    """The engine's own settings (podman's ``CONTAINERS_CONF``)."""
    harness: str = field(init=False)
    """This process's pid: the label of its containers."""
    _users: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Containers of harnesses whose process died (a killed test run) are removed:
        they would hold their pods' addresses and ports."""
        self.harness = str(os.getpid())
        listed = subprocess.run(
            [
                self.engine,
                "ps",
                "--all",
                "--filter",
                f"label={HARNESS_LABEL}",
                "--format",
                f'{{{{.ID}}}} {{{{index .Labels "{HARNESS_LABEL}"}}}}',
            ],
            capture_output=True,
            text=True,
            env={**os.environ, **self.engine_env},
            timeout=60,
            check=False,
        )
        orphans = [
            container
            for container, _, pid in (line.partition(" ") for line in listed.stdout.splitlines())
            if pid.isdigit() and not process_alive(int(pid))
        ]
        if orphans:
            subprocess.run(
                [self.engine, "rm", "--force", *orphans],
                capture_output=True,
                env={**os.environ, **self.engine_env},
                timeout=120,
                check=False,
            )

    def launch(self, container: Container) -> tuple[list[str], dict[str, str]]:
        security = container.security
        self._check_non_root(container)
        argv = [
            self.engine,
            "run",
            "--rm",
            "--name",
            container.name,
            "--label",
            f"{HARNESS_LABEL}={self.harness}",
            "--network",
            "host",
            "--pull",
            "never",
            "--volume",
            f"{HOSTS}:{HOSTS}:ro",
        ]
        if security.run_as_user is not None:
            group = "" if security.run_as_group is None else f":{security.run_as_group}"
            argv += ["--user", f"{security.run_as_user}{group}"]
        if security.fs_group is not None:
            argv += ["--group-add", str(security.fs_group)]
        if security.read_only_root:
            argv += read_only_root(self.engine)
        if security.drop_all_capabilities:
            argv += ["--cap-drop", "ALL"]
        if security.no_new_privileges:
            argv += ["--security-opt", "no-new-privileges"]
        for mount in container.mounts:
            if security.fs_group is not None and mount.owned_by_fs_group:
                own_by_group(mount.source, security.fs_group, mount.read_only)
            suffix = ":ro" if mount.read_only else ""
            argv += ["--volume", f"{mount.source}:{mount.target}{suffix}"]
        for name, value in container.env.items():
            argv += ["--env", f"{name}={value}"]
        if container.working_dir:
            argv += ["--workdir", container.working_dir]
        arguments = list(container.args)
        if container.command and self.engine == "podman":
            argv += ["--entrypoint", json.dumps(list(container.command))]
        elif container.command:  # docker takes the program alone; the rest go before args
            argv += ["--entrypoint", container.command[0]]
            arguments = [*container.command[1:], *arguments]
        argv += [container.image, *arguments]
        return argv, {**os.environ, **self.engine_env}

    def _check_non_root(self, container: Container) -> None:
        """The kubelet's ``runAsNonRoot`` check: the user must be known to be non-root."""
        security = container.security
        if not security.run_as_non_root:
            return
        if security.run_as_user is not None:
            if security.run_as_user == 0:
                raise ContainerConfigError("container's runAsUser breaks non-root policy")
            return
        user = self.image_user(container.image).split(":")[0]
        if not user.isdigit():
            raise ContainerConfigError(
                f"container has runAsNonRoot and image has non-numeric user ({user or 'root'}),"
                " cannot verify user is non-root"
            )
        if int(user) == 0:
            raise ContainerConfigError("container has runAsNonRoot and image will run as root")

    def image_user(self, image: str) -> str:
        """The image's ``USER`` (empty: root)."""
        if image not in self._users:
            result = subprocess.run(
                [self.engine, "image", "inspect", "--format", "{{.Config.User}}", image],
                capture_output=True,
                text=True,
                env={**os.environ, **self.engine_env},
                timeout=30,
                check=False,
            )
            if result.returncode != 0:
                raise ContainerConfigError(f"image {image!r}: {result.stderr.strip()}")
            self._users[image] = result.stdout.strip()
        return self._users[image]

    async def signal(self, container: Container, pid: int, signum: signal.Signals) -> None:
        """``kill`` through the engine (the launching client cannot forward SIGKILL); the
        client itself too, for a container that is not running yet. SIGKILL removes the
        container, so none outlives its client. (A SIGTERM that reaches the container before
        its process handles it is lost, as in Kubernetes: its PID 1 ignores it.)"""
        if signum == signal.SIGKILL:
            await self._engine("rm", "--force", container.name)
        else:
            await self._engine("kill", "--signal", signum.name, container.name)
        signal_group(pid, signum)

    async def close(self) -> None:
        listed = await self._engine(
            "ps", "--all", "--quiet", "--filter", f"label={HARNESS_LABEL}={self.harness}"
        )
        if ids := listed.split():
            await self._engine("rm", "--force", *ids)

    async def _engine(self, *arguments: str) -> str:
        process = await asyncio.create_subprocess_exec(
            self.engine,
            *arguments,
            env={**os.environ, **self.engine_env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(30):
                out, _ = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            return ""
        return out.decode()


def read_only_root(engine: str) -> list[str]:
    """The ``run`` flags of a read-only root filesystem with nothing writable added: podman
    alone adds writable ``/tmp`` and ``/run`` to it unless told not to; Kubernetes adds none."""
    return ["--read-only", *(["--read-only-tmpfs=false"] if engine == "podman" else [])]


def own_by_group(directory: Path, gid: int, read_only: bool) -> None:
    """What a kubelet does to a volume of a pod with an ``fsGroup``: everything in it is
    the group's, readable (and writable, unless mounted read-only) by it; directories are
    set-group-id, so what the container creates stays the group's."""
    file_bits = 0o040 if read_only else 0o060
    directory_bits = 0o2050 if read_only else 0o2070
    for path in [directory, *directory.rglob("*")]:
        if path.is_symlink():
            continue
        os.chown(path, -1, gid)
        bits = directory_bits if path.is_dir() else file_bits
        path.chmod(path.stat().st_mode & 0o7777 | bits)

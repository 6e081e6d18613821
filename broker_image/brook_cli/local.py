"""Brokers as processes on this machine: plan their ports, start them, wait until they are
ready, watch them, and stop them within a bounded time.

Used by ``brook local up``, the benchmark and the integration tests, so all start brokers
the same way.
Each broker is ``python -m brook_broker`` in its own process group: a Ctrl-C in the
terminal reaches only the CLI, which then stops the brokers one orderly SIGTERM each.
On Linux a broker also gets SIGTERM if the CLI itself dies, so none is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from brook_broker.config import WILDCARD_HOSTS
from brook_client.session import format_address

HTTP_PORT_OFFSET = 1000
"""A broker's HTTP port is its Kafka port plus this offset (9092 -> 10092)."""

CONTROLLER_PORT_OFFSET = 2000
"""A broker's Raft (metadata quorum) port is its Kafka port plus this offset (9092 -> 11092)."""

INTERNAL_PORT_OFFSET = 3000
"""A broker's internal (broker-to-broker) port is its Kafka port plus this offset
(9092 -> 12092)."""

CLUSTER_SECRET_FILE = "cluster.secret"
"""In the data root: the secret the brokers of one local cluster prove themselves with."""

_PR_SET_PDEATHSIG = 1


def reachable_host(host: str) -> str:
    """The address clients on this machine use for a listener bound to ``host``."""
    return "127.0.0.1" if host in WILDCARD_HOSTS else host


@dataclass(frozen=True)
class BrokerSpec:
    """Everything needed to start one broker process."""

    node_id: int
    data_dir: Path
    host: str
    kafka_port: int
    http_port: int
    broker_args: tuple[str, ...] = ()
    controller_port: int | None = None
    """The broker's Raft port, as a voter of ``controller_quorum``."""
    controller_quorum: str | None = None
    """``--controller-quorum`` (ID@HOST:PORT,...); None: the broker is a quorum of one."""
    internal_port: int | None = None
    """The broker's internal listener, where brokers send each other broker-only requests."""
    cluster_secret_file: Path | None = None
    """Given as ``--cluster-secret-file`` (a flag value would show in ``ps``); made on
    the first start (``ensure_cluster_secret``)."""

    @property
    def kafka_address(self) -> str:
        """The address clients are given (and the one in the bootstrap line)."""
        return format_address(reachable_host(self.host), self.kafka_port)

    @property
    def http_address(self) -> str:
        return format_address(reachable_host(self.host), self.http_port)

    @property
    def controller_address(self) -> str | None:
        if self.controller_port is None:
            return None
        return format_address(reachable_host(self.host), self.controller_port)

    @property
    def internal_address(self) -> str | None:
        if self.internal_port is None:
            return None
        return format_address(reachable_host(self.host), self.internal_port)

    def command(self) -> list[str]:
        internal = []
        if self.internal_port is not None:
            internal = [
                "--internal-listen",
                format_address(self.host, self.internal_port),
                "--internal-advertised-listener",
                str(self.internal_address),
            ]
        if self.cluster_secret_file is not None:
            internal += ["--cluster-secret-file", str(self.cluster_secret_file)]
        quorum = []
        if self.controller_quorum is not None:
            quorum = ["--controller-quorum", self.controller_quorum]
            if self.controller_port is not None:
                quorum += ["--controller-listen", format_address(self.host, self.controller_port)]
        return [
            sys.executable,
            "-m",
            "brook_broker",
            "--node-id",
            str(self.node_id),
            "--data-dir",
            str(self.data_dir),
            "--listen",
            format_address(self.host, self.kafka_port),
            "--advertised-listener",
            self.kafka_address,
            "--http-listen",
            format_address(self.host, self.http_port),
            *quorum,
            *internal,
            *self.broker_args,
        ]


def plan_cluster(
    *, brokers: int, data_dir: Path, host: str, port: int, broker_args: Sequence[str] = ()
) -> list[BrokerSpec]:
    """Broker ``i`` listens on ``port + i``, serves HTTP on ``port + i + 1000``, speaks
    Raft on ``port + i + 2000`` and takes other brokers' requests on ``port + i + 3000``;
    every broker is a voter of the metadata quorum. Its data lives in
    ``data_dir/broker-<i>``; the cluster's secret in ``data_dir/cluster.secret``.
    Raises ValueError for a cluster that cannot be run."""
    if brokers < 1:
        raise ValueError(f"--brokers {brokers}: a cluster needs at least one broker")
    highest = port + brokers - 1 + INTERNAL_PORT_OFFSET
    if port < 1 or highest > 65535:
        raise ValueError(
            f"--port {port}: ports {port}..{port + brokers - 1} and their HTTP "
            f"(+{HTTP_PORT_OFFSET}), Raft (+{CONTROLLER_PORT_OFFSET}) and internal "
            f"(+{INTERNAL_PORT_OFFSET}) ports must lie within 1..65535"
        )
    quorum = ",".join(
        f"{index}@{format_address(reachable_host(host), port + index + CONTROLLER_PORT_OFFSET)}"
        for index in range(brokers)
    )
    return [
        BrokerSpec(
            node_id=index,
            data_dir=data_dir / f"broker-{index}",
            host=host,
            kafka_port=port + index,
            http_port=port + index + HTTP_PORT_OFFSET,
            broker_args=tuple(broker_args),
            controller_port=port + index + CONTROLLER_PORT_OFFSET,
            controller_quorum=quorum,
            internal_port=port + index + INTERNAL_PORT_OFFSET,
            cluster_secret_file=data_dir / CLUSTER_SECRET_FILE,
        )
        for index in range(brokers)
    ]


def addresses_in_use(specs: Sequence[BrokerSpec]) -> list[str]:
    """The Kafka, HTTP, Raft and internal addresses of ``specs`` that something already
    listens on.

    Checked before starting, so that a port held by another process is reported as such
    (and its ``/readyz`` is never mistaken for our broker's)."""
    busy = []
    for spec in specs:
        for port in (spec.kafka_port, spec.http_port, spec.controller_port, spec.internal_port):
            if port is None:
                continue
            try:
                family = socket.getaddrinfo(spec.host or None, port, type=socket.SOCK_STREAM)[0][0]
                socket.create_server((spec.host, port), family=family).close()
            except OSError:
                busy.append(format_address(spec.host, port))
    return busy


def describe_exit(code: int) -> str:
    """``exited with code 1`` or ``was killed by SIGKILL``."""
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def bootstrap_servers(specs: Sequence[BrokerSpec]) -> str:
    return ",".join(spec.kafka_address for spec in specs)


class BrokerFailed(Exception):
    """A broker exited, or did not become ready in time; the message says which and why."""


def ensure_cluster_secret(path: Path, secret: str | None = None) -> str:
    """The cluster secret in ``path``, made (random, readable by its owner only) unless the
    file exists: the same data root keeps its secret across runs, so a broker restarted
    alone still matches the others. Given the ``secret`` the running brokers were started
    with, a file that no longer holds it (deleted, emptied or replaced meanwhile) is
    written again with it: a broker restarted with another secret could never rejoin.
    Raises OSError for a file that cannot be read, ValueError for an empty one."""
    try:
        held: str | None = path.read_text().strip()
    except FileNotFoundError:
        held = None
    if secret is not None:
        if held != secret:
            _write_secret(path, secret, replace=True)
        return secret
    if held is None:
        _write_secret(path, secrets.token_urlsafe(32), replace=False)
        held = path.read_text().strip()
    if not held:
        raise ValueError("the file is empty; remove it to have a new secret made")
    return held


def _write_secret(path: Path, secret: str, *, replace: bool) -> None:
    """Put ``secret`` into ``path`` whole, so a broker never reads half of it. Without
    ``replace`` a file made meanwhile by another start wins: that one is the secret."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret)
    if replace:
        temporary.replace(path)
        return
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()


def _die_with_parent() -> None:
    """In the child before exec: ask Linux for SIGTERM when the parent dies."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is not None:
        ctypes.CDLL(libc_name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class BrokerProcess:
    spec: BrokerSpec
    stderr: IO[bytes] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    cluster_secret: str | None = field(default=None, init=False, repr=False)
    """The secret of the first start; every later start gets the same one."""

    def start(self) -> None:
        """Raises BrokerFailed if the cluster secret file is unusable, OSError if the
        process cannot be spawned."""
        self.spec.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.spec.cluster_secret_file
        if path is not None:
            try:
                self.cluster_secret = ensure_cluster_secret(path, self.cluster_secret)
            except (OSError, ValueError) as error:
                raise BrokerFailed(f"cluster secret {path}: {error}") from None
        self.process = subprocess.Popen(
            self.spec.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            process_group=0,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    @property
    def pid(self) -> int:
        assert self.process is not None, "broker not started"
        return self.process.pid

    def exit_code(self) -> int | None:
        """None while the process runs."""
        return None if self.process is None else self.process.poll()

    def is_ready(self) -> bool:
        url = f"http://{self.spec.http_address}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float, interrupted: Callable[[], bool] = lambda: False) -> bool:
        """Poll ``/readyz`` until it answers 200. False if ``interrupted()`` became true;
        raises BrokerFailed if the broker exits or ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while not interrupted():
            code = self.exit_code()
            if code is not None:
                raise BrokerFailed(
                    f"broker {self.spec.node_id} {describe_exit(code)} before it was ready"
                )
            if self.is_ready():
                return True
            if time.monotonic() > deadline:
                raise BrokerFailed(
                    f"broker {self.spec.node_id} was not ready within {timeout:g} s "
                    f"(GET http://{self.spec.http_address}/readyz)"
                )
            time.sleep(0.1)
        return False

    def is_running(self) -> bool:
        return self.process is not None and self.exit_code() is None

    def terminate(self) -> None:
        """Send SIGTERM, which the broker answers with a clean stop."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, as a crash would (no flush, no close), and wait for the process."""
        assert self.process is not None, "broker not started"
        self.process.kill()
        self.process.wait()

    def wait_or_kill(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the process to exit, then SIGKILL it.
        Returns its exit code, or None if it had to be killed."""
        assert self.process is not None, "broker not started"
        try:
            return self.process.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            self.kill()
            return None


def stop_all(brokers: Sequence[BrokerProcess], timeout: float) -> list[int]:
    """SIGTERM every running broker, wait up to ``timeout`` seconds in all, then SIGKILL
    those still running. Returns the node ids that had to be killed."""
    running = [broker for broker in brokers if broker.is_running()]
    for broker in running:
        broker.terminate()
    deadline = time.monotonic() + timeout
    return [
        broker.spec.node_id
        for broker in running
        if broker.wait_or_kill(deadline - time.monotonic()) is None
    ]


LOCK_FILE = "local.lock"
"""In the data root: locked (``flock``) by the ``brook local up`` that runs from it."""


def lock_data_root(data_dir: Path) -> int | None:
    """Take the data root for this process: a second ``brook local up`` on it, even one
    started before the first wrote cluster.json and on other ports, would run brokers
    on the same logs and Raft journals, and they would remove each other's partitions.
    Returns the descriptor that holds the lock (closing it, or the process ending,
    releases it), or None if another process holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def cluster_file(data_dir: Path) -> Path:
    return data_dir / "cluster.json"


def write_cluster_file(data_dir: Path, brokers: Sequence[BrokerProcess]) -> None:
    """Record who runs where, for scripts and for people looking at a running cluster;
    a broker that is down has no pid. Replaced atomically, so a reader never sees half."""
    description = {
        "bootstrap": bootstrap_servers([broker.spec for broker in brokers]),
        "brokers": [
            {
                "node_id": broker.spec.node_id,
                "pid": broker.pid if broker.is_running() else None,
                "kafka": broker.spec.kafka_address,
                "http": broker.spec.http_address,
                "controller": broker.spec.controller_address,
                "internal": broker.spec.internal_address,
                "data_dir": str(broker.spec.data_dir),
            }
            for broker in brokers
        ],
    }
    path = cluster_file(data_dir)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(description, indent=2) + "\n")
    temporary.replace(path)


def running_broker_pids(data_dir: Path) -> list[int]:
    """Pids from an earlier ``cluster.json`` that still run a broker (stale files are harmless)."""
    try:
        description = json.loads(cluster_file(data_dir).read_text())
    except (OSError, ValueError):
        return []
    alive = []
    for entry in description.get("brokers", []):
        pid = entry.get("pid")
        try:
            command_line = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
        except (OSError, TypeError, ValueError):
            continue
        if b"brook_broker" in command_line:
            alive.append(int(pid))
    return alive

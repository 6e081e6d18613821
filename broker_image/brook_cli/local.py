"""Brokers as processes on this machine: plan their ports, start them, wait until they are
ready, watch them, and stop them within a bounded time.

Used by ``brook local up`` and by the benchmark, so both start brokers the same way.
Each broker is ``python -m brook_broker`` in its own process group: a Ctrl-C in the
terminal reaches only the CLI, which then stops the brokers one orderly SIGTERM each.
On Linux a broker also gets SIGTERM if the CLI itself dies, so none is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
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

HTTP_PORT_OFFSET = 1000
"""A broker's HTTP port is its Kafka port plus this offset (9092 -> 10092)."""

MAX_LOCAL_BROKERS = 1
"""Brokers ``brook local up`` can run; more need replication, which comes later."""

_WILDCARD_HOSTS = ("0.0.0.0", "::", "")
_PR_SET_PDEATHSIG = 1


def format_address(host: str, port: int) -> str:
    """``HOST:PORT``, with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def reachable_host(host: str) -> str:
    """The address clients on this machine use for a listener bound to ``host``."""
    return "127.0.0.1" if host in _WILDCARD_HOSTS else host


@dataclass(frozen=True)
class BrokerSpec:
    """Everything needed to start one broker process."""

    node_id: int
    data_dir: Path
    host: str
    kafka_port: int
    http_port: int
    broker_args: tuple[str, ...] = ()

    @property
    def kafka_address(self) -> str:
        """The address clients are given (and the one in the bootstrap line)."""
        return format_address(reachable_host(self.host), self.kafka_port)

    @property
    def http_address(self) -> str:
        return format_address(reachable_host(self.host), self.http_port)

    def command(self) -> list[str]:
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
            *self.broker_args,
        ]


def plan_cluster(
    *, brokers: int, data_dir: Path, host: str, port: int, broker_args: Sequence[str] = ()
) -> list[BrokerSpec]:
    """Broker ``i`` listens on ``port + i`` and serves HTTP on ``port + i + 1000``; its data
    lives in ``data_dir/broker-<i>``. Raises ValueError for a cluster that cannot be run."""
    if not 1 <= brokers <= MAX_LOCAL_BROKERS:
        raise ValueError(
            f"--brokers {brokers}: this version runs exactly {MAX_LOCAL_BROKERS} broker; "
            "clusters of several brokers come with replication"
        )
    highest = port + brokers - 1 + HTTP_PORT_OFFSET
    if port < 1 or highest > 65535:
        raise ValueError(
            f"--port {port}: ports {port}..{port + brokers - 1} and their HTTP ports "
            f"(+{HTTP_PORT_OFFSET}) must lie within 1..65535"
        )
    return [
        BrokerSpec(
            node_id=index,
            data_dir=data_dir / f"broker-{index}",
            host=host,
            kafka_port=port + index,
            http_port=port + index + HTTP_PORT_OFFSET,
            broker_args=tuple(broker_args),
        )
        for index in range(brokers)
    ]


def addresses_in_use(specs: Sequence[BrokerSpec]) -> list[str]:
    """The Kafka and HTTP addresses of ``specs`` that something already listens on.

    Checked before starting, so that a port held by another process is reported as such
    (and its ``/readyz`` is never mistaken for our broker's)."""
    busy = []
    for spec in specs:
        for port in (spec.kafka_port, spec.http_port):
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

    def start(self) -> None:
        self.spec.data_dir.mkdir(parents=True, exist_ok=True)
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


def stop_all(brokers: Sequence[BrokerProcess], timeout: float) -> list[int]:
    """SIGTERM every running broker, wait up to ``timeout`` seconds in all, then SIGKILL
    those still running. Returns the node ids that had to be killed."""
    running = [
        broker for broker in brokers if broker.process is not None and broker.exit_code() is None
    ]
    for broker in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(broker.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    killed = []
    for broker in running:
        assert broker.process is not None
        try:
            broker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            broker.process.kill()
            broker.process.wait()
            killed.append(broker.spec.node_id)
    return killed


def cluster_file(data_dir: Path) -> Path:
    return data_dir / "cluster.json"


def write_cluster_file(data_dir: Path, brokers: Sequence[BrokerProcess]) -> None:
    """Record who runs where, for scripts and for people looking at a running cluster."""
    description = {
        "bootstrap": bootstrap_servers([broker.spec for broker in brokers]),
        "brokers": [
            {
                "node_id": broker.spec.node_id,
                "pid": broker.pid,
                "kafka": broker.spec.kafka_address,
                "http": broker.spec.http_address,
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

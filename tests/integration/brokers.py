"""Test-side tools for integration tests: broker processes and raw Kafka frames.

Brokers are started and stopped by the CLI's process handling (``brook_cli.local``), with
their log lines kept in a file per broker; record batches come from ``tests.support``.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import struct
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brook_cli import local
from brook_cli.local import BrokerFailed
from kio.index import load_response_schema
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.schema.request_header.v2.header import RequestHeader as RequestHeaderV2
from kio.schema.response_header.v0.header import ResponseHeader as ResponseHeaderV0
from kio.serial import entity_reader, entity_writer
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

HOST = "127.0.0.1"
PORT_FLOOR = 10000
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0

# --- broker processes ------------------------------------------------------------------


def scrape(url: str) -> list[Sample]:
    """Every sample of a Prometheus ``/metrics`` endpoint (a broker's or the operator's)."""
    with urllib.request.urlopen(url, timeout=5.0) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def ephemeral_port_floor() -> int:
    """The lowest port the kernel hands out to outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(offsets: Sequence[int] = (0,)) -> int:
    """A loopback port P such that P + each offset was free a moment ago.

    Ports are drawn below the kernel's ephemeral range: a port from that range may be
    taken by any client connection's local end between this check and the broker's
    bind (or a restarted broker's re-bind), which fails it with EADDRINUSE."""
    ceiling = ephemeral_port_floor() - max(offsets)
    for _ in range(200):
        port = random.randrange(PORT_FLOOR, ceiling)
        try:
            for offset in offsets:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind((HOST, port + offset))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free loopback ports in {PORT_FLOOR}..{ceiling}")


def free_cluster_port(brokers: int) -> int:
    """A ``--port`` for ``brook local up --brokers N`` whose Kafka, HTTP, Raft and
    internal ports (``local.plan_cluster``'s layout) are all free."""
    offsets = (0, local.HTTP_PORT_OFFSET, local.CONTROLLER_PORT_OFFSET, local.INTERNAL_PORT_OFFSET)
    return free_port([index + offset for index in range(brokers) for offset in offsets])


@dataclass(frozen=True)
class NamespacedSpec(local.BrokerSpec):
    """A broker started inside a network namespace (``ip netns exec``, which execs the
    broker, so the pid is the broker's)."""

    namespace: str = ""

    def command(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *super().command()]


@dataclass
class BrokerProcess:
    """One ``python -m brook_broker`` process; restarts keep its data directory and ports."""

    directory: Path
    extra_args: Sequence[str] = ()
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    internal_port: int = field(default_factory=free_port)
    node_id: int = 0
    host: str = HOST
    namespace: str | None = None
    cluster_secret_file: Path | None = None
    """The secret shared by the brokers of a cluster (None: a lone broker, which makes
    up its own)."""
    process: local.BrokerProcess | None = None
    starts: int = 0
    paused: bool = False

    @property
    def spec(self) -> local.BrokerSpec:
        fields = {
            "node_id": self.node_id,
            "data_dir": self.data_dir,
            "host": self.host,
            "kafka_port": self.port,
            "http_port": self.http_port,
            "internal_port": self.internal_port,
            "cluster_secret_file": self.cluster_secret_file,
            "broker_args": tuple(self.extra_args),
        }
        if self.namespace is None:
            return local.BrokerSpec(**fields)
        return NamespacedSpec(**fields, namespace=self.namespace)

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "broker.log"

    @property
    def bootstrap(self) -> str:
        return self.spec.kafka_address

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def internal_address(self) -> tuple[str, int]:
        """The internal listener: only brokers (with the cluster secret) may use it."""
        return self.host, self.internal_port

    @property
    def http_address(self) -> str:
        return self.spec.http_address

    def metric(self, name: str) -> float:
        """The sum of a metric's samples (0 if it has none)."""
        samples = scrape(f"http://{self.http_address}/metrics")
        return sum(sample.value for sample in samples if sample.name == name)

    @property
    def pid(self) -> int:
        assert self.process is not None, "broker is not running"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.is_running()

    def start(self) -> None:
        """Start the process and wait (bounded) until /readyz answers 200."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process without waiting: brokers of one quorum start together."""
        assert not self.running, "broker is already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        spec = self.spec
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}: {' '.join(spec.command())}\n".encode())
            log.flush()
            self.process = local.BrokerProcess(spec, stderr=log)
            self.process.start()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait (bounded) until /readyz answers 200; a broker that fails is killed."""
        assert self.process is not None, "broker is not running"
        try:
            self.process.wait_ready(timeout)
        except BrokerFailed as error:
            self.kill9()
            raise BrokerFailed(f"{error}\n{self.log_tail()}") from None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, a bounded wait, then SIGKILL. Returns the exit code (None if killed)."""
        if self.process is None:
            return None
        self.resume()
        process, self.process = self.process, None
        if process.is_running():
            process.terminate()
        return process.wait_or_kill(timeout)

    def kill9(self) -> None:
        """Kill the process with SIGKILL, as a crash would: no flush, no close."""
        if self.process is None:
            return
        process, self.process = self.process, None
        self.paused = False
        process.kill()

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets open but answers nothing."""
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after ``pause`` (nothing otherwise)."""
        if self.paused and self.process is not None:
            os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def restart(self) -> None:
        """Stop (if running) and start again on the same data directory and ports."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no broker log)"
        return "\n".join(text.splitlines()[-lines:])

    def partition_dir(self, topic: str, partition: int = 0) -> Path:
        return self.data_dir / f"{topic}-{partition}"

    def segments(self, topic: str, partition: int = 0) -> list[Path]:
        """The partition's segment files, oldest first (names are 20-digit base offsets)."""
        return sorted(self.partition_dir(topic, partition).glob("*.log"))


def stop_brokers(brokers: Sequence[BrokerProcess], timeout: float = 2 * STOP_TIMEOUT_S) -> None:
    """SIGTERM all at once (each controlled shutdown needs the others up), a bounded wait
    for all of them together, then SIGKILL for those still running."""
    processes = []
    for broker in brokers:
        broker.resume()
        if broker.process is not None:
            processes.append(broker.process)
            broker.process = None
    local.stop_all(processes, timeout)


@contextlib.contextmanager
def running_broker(directory: Path, *extra_args: str) -> Iterator[BrokerProcess]:
    """A started broker that is always stopped, bounded in time, when the block ends."""
    broker = BrokerProcess(directory, extra_args)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


# --- raw Kafka protocol ----------------------------------------------------------------

_SIZE = struct.Struct(">i")


class ConnectionClosed(Exception):
    """The broker closed the connection (which is a valid answer to bad input)."""


class KafkaConnection:
    """A blocking socket that speaks Kafka frames built with kio."""

    def __init__(self, address: tuple[str, int], timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._correlation_id = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> KafkaConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def next_correlation_id(self) -> int:
        self._correlation_id += 1
        return self._correlation_id

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, payload: bytes) -> None:
        self.sock.sendall(_SIZE.pack(len(payload)) + payload)

    def _read_exactly(self, size: int) -> bytes:
        parts: list[bytes] = []
        remaining = size
        while remaining:
            try:
                chunk = self.sock.recv(min(remaining, 1 << 20))
            except ConnectionResetError as error:
                raise ConnectionClosed(str(error)) from None
            if not chunk:
                raise ConnectionClosed("connection closed by the broker")
            parts.append(chunk)
            remaining -= len(chunk)
        return b"".join(parts)

    def read_frame(self) -> bytes:
        (size,) = _SIZE.unpack(self._read_exactly(4))
        return self._read_exactly(size)

    def is_closed_by_peer(self, timeout: float = 10.0) -> bool:
        """True once the broker has closed the connection, False if it sent data instead."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def request(
        self, body: Any, *, correlation_id: int | None = None, client_id: str = "test"
    ) -> Any:
        """Send one request (a kio request entity) and decode its response."""
        correlation_id = self.next_correlation_id() if correlation_id is None else correlation_id
        self.send_frame(encode_request(body, correlation_id, client_id))
        return decode_response(
            type(body).__api_key__, type(body).__version__, self.read_frame(), correlation_id
        )


def encode_request(body: Any, correlation_id: int, client_id: str | None = "test") -> bytes:
    """Header and body of a request frame (without the size prefix)."""
    entity_type = type(body)
    header_type = entity_type.__header_schema__
    assert header_type in (RequestHeaderV1, RequestHeaderV2), header_type
    header = header_type(
        request_api_key=entity_type.__api_key__,
        request_api_version=entity_type.__version__,
        correlation_id=correlation_id,
        client_id=client_id,
    )
    parts: list[bytes] = []
    sink = _Sink(parts)
    entity_writer(header_type)(sink, header)
    entity_writer(entity_type)(sink, body)
    return b"".join(parts)


def decode_response(api_key: int, api_version: int, frame: bytes, correlation_id: int) -> Any:
    response_type = load_response_schema(api_key, api_version)
    header_type = ResponseHeaderV0 if api_key == 18 else response_type.__header_schema__
    view = memoryview(frame).toreadonly()
    header, offset = entity_reader(header_type)(view, 0)
    assert header.correlation_id == correlation_id, (header.correlation_id, correlation_id)
    body, size = entity_reader(response_type)(view, offset)
    assert offset + size == len(frame), "response has trailing bytes"
    return body


class _Sink:
    def __init__(self, parts: list[bytes]) -> None:
        self.write = parts.append


def wait_until(predicate: Any, timeout: float, interval: float = 0.1, message: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {message or predicate}")
        time.sleep(interval)


def now_ms() -> int:
    return int(time.time() * 1000)

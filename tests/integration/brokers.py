"""Test-side tools for integration tests: broker processes, raw Kafka frames, v2 batches.

The batch encoder and decoder here are written independently of the broker's own code,
so that a test that checks what the broker stores does not trust the broker's parser.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crc32c import crc32c
from kio.index import load_response_schema
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.schema.request_header.v2.header import RequestHeader as RequestHeaderV2
from kio.schema.response_header.v0.header import ResponseHeader as ResponseHeaderV0
from kio.serial import entity_reader, entity_writer

HOST = "127.0.0.1"
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0

# --- broker processes ------------------------------------------------------------------


class BrokerFailed(RuntimeError):
    """The broker process did not come up, or died; the message carries its log."""


def free_port() -> int:
    """A loopback port that was free a moment ago (the broker binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@dataclass
class BrokerProcess:
    """One ``python -m brook_broker`` process; restarts keep its data directory and ports."""

    directory: Path
    extra_args: Sequence[str] = ()
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "broker.log"

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.port

    @property
    def http_address(self) -> str:
        return f"{HOST}:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "broker is not running"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process and wait (bounded) until /readyz answers 200."""
        assert not self.running, "broker is already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        command = [
            sys.executable,
            "-m",
            "brook_broker",
            "--node-id",
            "0",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            self.bootstrap,
            "--http-listen",
            self.http_address,
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}: {' '.join(command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_ready()
        except BrokerFailed:
            self.kill9()
            raise

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        url = f"http://{self.http_address}/readyz"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise BrokerFailed(f"broker exited with {code} before ready\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise BrokerFailed(f"broker not ready within {READY_TIMEOUT_S} s\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, a bounded wait, then SIGKILL. Returns the exit code (None if killed)."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        if process.poll() is not None:
            return process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
            return None

    def kill9(self) -> None:
        """Kill the process with SIGKILL, as a crash would: no flush, no close."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.kill()
        process.wait(STOP_TIMEOUT_S)

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


def _die_with_parent() -> None:
    """Linux: the broker gets SIGKILL if the test process dies without stopping it."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def running_broker(directory: Path, *extra_args: str) -> Iterator[BrokerProcess]:
    """A started broker that is always stopped, bounded in time, when the block ends."""
    broker = BrokerProcess(directory, extra_args)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


# --- v2 record batches -----------------------------------------------------------------

_BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")
BATCH_HEADER_SIZE = _BATCH_HEADER.size  # 61
CRC_START = 21  # the CRC32C covers attributes .. end of batch
COMPRESSION_CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp_delta: int = 0


@dataclass(frozen=True)
class Batch:
    """A decoded v2 batch header and where the batch lies in the bytes it came from."""

    position: int
    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records_count: int

    @property
    def size(self) -> int:
        return self.batch_length + 12

    @property
    def end(self) -> int:
        return self.position + self.size

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def compression(self) -> int:
        return self.attributes & 0x07


def _varint(value: int) -> bytes:
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while zigzag >= 0x80:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


def _varbytes(data: bytes | None) -> bytes:
    return _varint(-1) if data is None else _varint(len(data)) + data


def encode_record(record: Record, offset_delta: int) -> bytes:
    body = b"".join(
        [
            b"\x00",  # attributes
            _varint(record.timestamp_delta),
            _varint(offset_delta),
            _varbytes(record.key),
            _varbytes(record.value),
            _varint(len(record.headers)),
            *(_varbytes(name.encode()) + _varbytes(value) for name, value in record.headers),
        ]
    )
    return _varint(len(body)) + body


def encode_batch(
    records: Sequence[Record],
    *,
    base_timestamp: int,
    base_offset: int = 0,
    magic: int = 2,
    attributes: int = 0,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """An uncompressed v2 batch with a correct CRC32C (callers corrupt it on purpose)."""
    payload = b"".join(encode_record(record, delta) for delta, record in enumerate(records))
    max_timestamp = base_timestamp + max((r.timestamp_delta for r in records), default=0)
    after_crc = (
        struct.pack(
            ">hiqqqhii",
            attributes,
            len(records) - 1,
            base_timestamp,
            max_timestamp,
            producer_id,
            producer_epoch,
            base_sequence,
            len(records),
        )
        + payload
    )
    batch_length = 4 + 1 + 4 + len(after_crc)  # leader epoch, magic, crc, rest
    return (
        struct.pack(">qiib", base_offset, batch_length, -1, magic)
        + struct.pack(">I", crc32c(after_crc))
        + after_crc
    )


def encode_legacy_message_set(value: bytes, *, magic: int, key: bytes | None = None) -> bytes:
    """A one-message message set in the pre-0.11 format (magic 0 or 1, CRC32)."""
    timestamp = struct.pack(">q", int(time.time() * 1000)) if magic == 1 else b""
    key_bytes = struct.pack(">i", -1) if key is None else struct.pack(">i", len(key)) + key
    body = (
        struct.pack(">bb", magic, 0) + timestamp + key_bytes + struct.pack(">i", len(value)) + value
    )
    message = struct.pack(">I", zlib.crc32(body)) + body
    return struct.pack(">qi", 0, len(message)) + message


def iter_batches(data: bytes | memoryview) -> Iterator[Batch]:
    """Every whole batch in ``data``; stops at a cut-off one (Fetch may end mid-batch)."""
    position = 0
    while len(data) - position >= BATCH_HEADER_SIZE:
        batch = Batch(position, *_BATCH_HEADER.unpack_from(data, position))
        if batch.batch_length < BATCH_HEADER_SIZE - 12 or batch.end > len(data):
            return
        yield batch
        position = batch.end


def batch_crc_ok(data: bytes | memoryview, batch: Batch) -> bool:
    return crc32c(bytes(data[batch.position + CRC_START : batch.end])) == batch.crc


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

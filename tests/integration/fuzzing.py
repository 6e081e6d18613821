"""Tooling of the request fuzzer: a seed corpus and its mutations, and one exchange.

Seeds come from two places:

* ``capture_client_frames``: the request frames real clients (confluent-kafka,
  kafka-python, aiokafka, kcat) send while they produce, consume in a group, commit and
  administer topics, recorded by a :class:`RecordingProxy` in front of a broker that
  advertises the proxy as its address, so that every connection passes through it;
* ``schema_frames``: for every API key and version a broker advertises, a frame kio
  encodes with one element in every array and a value in every field.

:class:`Mutator` turns seeds into almost-valid frames with a seeded ``random.Random``:
counts and lengths at the extremes (0, -1, 2^31-1, the largest varint), nulls where
a count or length was, truncations, bit flips and splices of two frames.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic
from kio.schema.api_versions.v0.request import ApiVersionsRequest as ApiVersionsV0

from tests.support.sample_requests import full_request

from .brokers import HOST, BrokerProcess, encode_request, free_port
from .clients import (
    AiokafkaDriver,
    ConfluentDriver,
    KafkaPythonDriver,
    KcatDriver,
    Message,
)
from .group_member import (
    AiokafkaConsumer,
    ConfluentConsumer,
    GroupConsumer,
    JournalWriter,
    KafkaPythonConsumer,
    MemberSettings,
)

_SIZE = struct.Struct(">i")
FOLLOW_UP_ID = 0x7E57_F022
_FOLLOW_UP = encode_request(ApiVersionsV0(), FOLLOW_UP_ID)
HEADER_BYTES = 8  # API key, version and correlation id: mutations leave them alone


# --- recording real clients ------------------------------------------------------------


class RecordingProxy:
    """Forwards TCP connections to ``target`` and records each request frame sent to it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._frames: list[bytes] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server((HOST, self.port))
        self._listener.settimeout(0.2)
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def recorded(self) -> list[bytes]:
        with self._lock:
            return list(self._frames)

    def __enter__(self) -> RecordingProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()
        for thread in list(self._threads):
            thread.join(timeout=5)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:  # the broker is not listening yet
                client.close()
                continue
            self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream, True)
            self._spawn(self._pump, upstream, client, False)

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        pending = bytearray()
        try:
            while chunk := source.recv(1 << 16):
                sink.sendall(chunk)
                if record:
                    pending += chunk
                    while len(pending) >= 4 and len(pending) >= 4 + _SIZE.unpack_from(pending)[0]:
                        size = _SIZE.unpack_from(pending)[0]
                        with self._lock:
                            self._frames.append(bytes(pending[4 : 4 + size]))
                        del pending[: 4 + size]
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def capture_client_frames(directory: Path, topic_prefix: str) -> list[bytes]:
    """The request frames of a session of every real client against a fresh broker."""
    with contextlib.ExitStack() as stack:
        broker = BrokerProcess(directory)
        proxy = stack.enter_context(RecordingProxy(broker.address))
        broker.extra_args = ("--advertised-listener", proxy.address)
        broker.start()
        stack.callback(broker.stop)
        _client_session(proxy.address, topic_prefix)
        return proxy.recorded()


def _client_session(bootstrap: str, prefix: str) -> None:
    topic, doomed = f"{prefix}-records", f"{prefix}-doomed"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    created = admin.create_topics([NewTopic(t, num_partitions=2) for t in (topic, doomed)])
    for future in created.values():
        future.result(timeout=20)
    admin.create_partitions([NewPartitions(topic, 3)])[topic].result(timeout=20)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin.describe_configs([resource])[resource].result(timeout=20)
    admin.list_topics(timeout=10)
    messages = [Message(i % 3, f"k{i}".encode(), f"v{i}".encode(), (), None) for i in range(6)]
    drivers = [
        (ConfluentDriver(), "lz4"),
        (KafkaPythonDriver(), "gzip"),
        (AiokafkaDriver(), "none"),
        (KcatDriver(), "snappy"),
    ]
    for runs, (driver, codec) in enumerate(drivers, 1):
        idempotent = {"enable.idempotence": True} if isinstance(driver, ConfluentDriver) else None
        driver.produce(bootstrap, topic, messages, codec, idempotent)
        driver.consume(bootstrap, topic, [0, 1, 2], runs * len(messages))
    for name, consumer_type in (
        ("confluent", ConfluentConsumer),
        ("kafka-python", KafkaPythonConsumer),
        ("aiokafka", AiokafkaConsumer),
    ):
        _consume_in_group(consumer_type, bootstrap, f"{prefix}-group-{name}", topic)
    admin.delete_topics([doomed])[doomed].result(timeout=20)


def _consume_in_group(
    consumer_type: Callable[[MemberSettings, JournalWriter], GroupConsumer],
    bootstrap: str,
    group: str,
    topic: str,
) -> None:
    """Join ``group``, poll until some records arrive, commit them, leave."""
    settings = MemberSettings(bootstrap, group, topic, 6000, 500)
    with tempfile.TemporaryFile("w+") as journal:
        consumer = consumer_type(settings, JournalWriter(journal))
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if records := consumer.poll(0.5):
                    offsets: dict[int, int] = {}
                    for record in records:
                        offsets[record.partition] = record.offset + 1
                    consumer.commit(offsets)
                    return
            raise AssertionError(f"{group}: no records within 30 s")
        finally:
            consumer.close()


def schema_frames(supported: Mapping[int, tuple[int, int]]) -> list[bytes]:
    """A frame with every field present for each advertised API key and version."""
    return [
        full_request(api_key, version)
        for api_key, (low, high) in sorted(supported.items())
        for version in range(low, high + 1)
    ]


# --- mutations -------------------------------------------------------------------------

_EXTREME_INT32 = [0, -1, -2, 2**31 - 1, -(2**31)]
_EXTREME_INT16 = [0, -1, 2**15 - 1, -(2**15)]
_EXTREME_VARINTS = [b"\x00", b"\x01", b"\x80\x01", bytes.fromhex("ffffffff0f")]


class Mutator:
    """Almost-valid frames from a corpus, reproducible from the seed of ``rng``."""

    def __init__(self, corpus: Sequence[bytes], rng: random.Random) -> None:
        self.corpus = [seed for seed in corpus if len(seed) > HEADER_BYTES]
        self.rng = rng
        self.kinds: dict[str, Callable[[bytearray], None]] = {
            "count-int32": self._extreme_int32,
            "length-int16": self._extreme_int16,
            "count-varint": self._extreme_varint,
            "truncate": self._truncate,
            "flip": self._flip,
            "splice": self._splice,
        }

    def mutate(self) -> tuple[str, bytes]:
        frame = bytearray(self.rng.choice(self.corpus))
        kinds = self.rng.sample(list(self.kinds), self.rng.choice([1, 1, 1, 2, 3]))
        for kind in kinds:
            if len(frame) > HEADER_BYTES:
                self.kinds[kind](frame)
        return "+".join(kinds), bytes(frame)

    def _position(self, frame: bytearray, width: int, small: Callable[[int], bool]) -> int:
        """A place after the header, preferably one whose value looks like a count or a
        length (small and positive): that is where extremes and nulls do the most."""
        places = range(HEADER_BYTES, max(HEADER_BYTES + 1, len(frame) - width + 1))
        likely = [at for at in places if small(int.from_bytes(frame[at : at + width], "big"))]
        return self.rng.choice(likely or list(places))

    def _extreme_int32(self, frame: bytearray) -> None:
        at = self._position(frame, 4, lambda value: 0 < value < 64)
        frame[at : at + 4] = struct.pack(">i", self.rng.choice(_EXTREME_INT32))

    def _extreme_int16(self, frame: bytearray) -> None:
        at = self._position(frame, 2, lambda value: 0 < value < 64)
        frame[at : at + 2] = struct.pack(">h", self.rng.choice(_EXTREME_INT16))

    def _extreme_varint(self, frame: bytearray) -> None:
        at = self._position(frame, 1, lambda value: 0 < value < 64)
        frame[at : at + 1] = self.rng.choice(_EXTREME_VARINTS)

    def _truncate(self, frame: bytearray) -> None:
        del frame[self.rng.randrange(HEADER_BYTES, len(frame)) :]

    def _flip(self, frame: bytearray) -> None:
        for _ in range(self.rng.randint(1, 4)):
            at = self.rng.randrange(HEADER_BYTES, len(frame))
            frame[at] ^= 1 << self.rng.randrange(8)

    def _splice(self, frame: bytearray) -> None:
        """The head of this frame, the tail of another of the same API."""
        same_api = [seed for seed in self.corpus if seed[:2] == frame[:2]] or self.corpus
        other = self.rng.choice(same_api)
        cut = self.rng.randrange(HEADER_BYTES, len(frame))
        frame[cut:] = other[self.rng.randrange(HEADER_BYTES, len(other)) :]


# --- one exchange ----------------------------------------------------------------------

ANSWERED, CLOSED, WAITING = "answered", "closed", "waiting"


def exchange(address: tuple[str, int], frame: bytes, timeout: float) -> str:
    """Send ``frame`` and an ApiVersions request behind it; how the broker dealt with it:
    ANSWERED (the ApiVersions answer came, so the frame was answered or ignored as acks=0
    is), CLOSED, or WAITING (nothing within ``timeout``: a long poll, a join)."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(_SIZE.pack(len(frame)) + frame + _SIZE.pack(len(_FOLLOW_UP)) + _FOLLOW_UP)
            for response in _frames(sock):
                if response[:4] == _SIZE.pack(FOLLOW_UP_ID):
                    return ANSWERED
        except (ConnectionResetError, BrokenPipeError):
            return CLOSED
        except TimeoutError:
            return WAITING
        return CLOSED


def _frames(sock: socket.socket) -> Iterator[bytes]:
    buffer = bytearray()
    while chunk := sock.recv(1 << 16):
        buffer += chunk
        while len(buffer) >= 4 and len(buffer) >= 4 + _SIZE.unpack_from(buffer)[0]:
            size = _SIZE.unpack_from(buffer)[0]
            yield bytes(buffer[4 : 4 + size])
            del buffer[: 4 + size]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")

"""Generated bad input against a running broker, over raw sockets.

Malformed and truncated frames, length prefixes above socket.request.max.bytes, unknown
API keys and versions, batches with a wrong CRC or an old magic byte: each must get
Kafka's error code or a closed connection. After every example the broker must still
serve a connection that was open all along and a new one, and the records already stored
must be byte for byte what they were.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from kio.schema.api_versions.v0.request import ApiVersionsRequest as ApiVersionsV0
from kio.schema.api_versions.v3.request import ApiVersionsRequest as ApiVersionsV3
from kio.schema.errors import ErrorCode
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.list_offsets.v7.request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData

from tests.support.batches import Record, encode_batch, encode_legacy_message_set

from .brokers import (
    BrokerProcess,
    ConnectionClosed,
    KafkaConnection,
    decode_response,
    encode_request,
    now_ms,
    running_broker,
)
from .clients import ConfluentDriver, Message, create_topic, fetch_all, list_offset

MAX_REQUEST_BYTES = 128 * 1024
STORED = "stored"
SCRATCH = "scratch"
FOLLOW_UP_ID = 0x7E57_0001
PRODUCE_KEY = 0
API_VERSIONS_KEY = 18

EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- the broker under test and what it must keep ---------------------------------------


@dataclass
class Guarded:
    """A broker, the stored topic's bytes and offsets, and a connection kept open throughout."""

    broker: BrokerProcess
    bystander: KafkaConnection
    stored: bytes
    offsets: tuple[int, int]
    segments: dict[str, bytes]
    supported: dict[int, tuple[int, int]]

    def snapshot(self, connection: KafkaConnection) -> tuple[bytes, tuple[int, int]]:
        data, _ = fetch_all(connection, STORED)
        earliest = list_offset(connection, STORED, 0, -2).offset
        latest = list_offset(connection, STORED, 0, -1).offset
        return data, (earliest, latest)

    def segment_bytes(self) -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in self.broker.segments(STORED)}

    def check(self) -> None:
        """The broker still serves every other connection and stored data is unchanged."""
        assert self.broker.running, f"broker died\n{self.broker.log_tail()}"
        try:
            bystander_view = self.snapshot(self.bystander)
        except ConnectionClosed as error:
            raise AssertionError("the broker closed an innocent connection") from error
        with KafkaConnection(self.broker.address) as fresh:
            assert (
                fresh.request(
                    ApiVersionsV3(client_software_name="t", client_software_version="1")
                ).error_code
                == 0
            )
            assert self.snapshot(fresh) == (self.stored, self.offsets)
        assert bystander_view == (self.stored, self.offsets)
        assert self.segment_bytes() == self.segments


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    flags = ("--socket-request-max-bytes", str(MAX_REQUEST_BYTES), "--auto-create-topics", "false")
    with running_broker(tmp_path_factory.mktemp("bad-input"), *flags) as broker:
        create_topic(broker.bootstrap, STORED)
        create_topic(broker.bootstrap, SCRATCH)
        base = now_ms()
        driver = ConfluentDriver()
        for chunk in range(5):
            messages = [
                Message(0, f"k{i}".encode(), f"v{i}".encode() * 3, (("h", b"x"),), base + i)
                for i in range(chunk * 40, chunk * 40 + 40)
            ]
            assert all(
                d.error is None for d in driver.produce(broker.bootstrap, STORED, messages, "none")
            )
        with KafkaConnection(broker.address) as connection:
            versions = connection.request(
                ApiVersionsV3(client_software_name="t", client_software_version="1")
            )
        supported = {key.api_key: (key.min_version, key.max_version) for key in versions.api_keys}
        bystander = KafkaConnection(broker.address)
        guard = Guarded(broker, bystander, b"", (0, 0), {}, supported)
        guard.stored, guard.offsets = guard.snapshot(bystander)
        guard.segments = guard.segment_bytes()
        assert guard.offsets == (0, 200) and guard.segments
        try:
            yield guard
        finally:
            bystander.close()
            print(broker.log_tail())


# --- one bad exchange ------------------------------------------------------------------

CLOSED = None
WAITING = "waiting"
FETCH_KEY = 1


def exchange(
    broker: BrokerProcess, payload: bytes, wait_s: float = 5.0
) -> list[bytes] | str | None:
    """Send one frame, then an ApiVersions v0 request on the same connection.

    Returns the frames answered before the ApiVersions response (none or one: the answer
    to the bad frame), None (CLOSED) if the broker closed the connection, which is also a
    valid answer, or WAITING if nothing came within ``wait_s`` (only right for a fetch
    that long-polls).
    """
    with KafkaConnection(broker.address, timeout=wait_s) as connection:
        follow_up = encode_request(ApiVersionsV0(), FOLLOW_UP_ID)
        try:
            connection.send_frame(payload)
            connection.send_frame(follow_up)
        except (BrokenPipeError, ConnectionResetError):
            return CLOSED
        answers: list[bytes] = []
        while True:
            try:
                frame = connection.read_frame()
            except ConnectionClosed:
                return CLOSED
            except TimeoutError:
                return WAITING
            if frame[:4] == struct.pack(">i", FOLLOW_UP_ID) and len(answers) <= 1:
                response = decode_response(API_VERSIONS_KEY, 0, frame, FOLLOW_UP_ID)
                assert response.error_code == ErrorCode.none
                return answers
            answers.append(frame)
            assert len(answers) == 1, "more than one answer to one request"


def exchange_any(broker: BrokerProcess, payload: bytes) -> None:
    """Any answer will do, or a closed connection; only a fetch may keep waiting."""
    result = exchange(broker, payload)
    event("closed" if result is CLOSED else "waiting" if result == WAITING else "answered")
    if result == WAITING:
        assert payload[:2] == struct.pack(">h", FETCH_KEY), "no answer and no close"


def produce_payload(
    records: bytes, *, topic: str = STORED, acks: int = 1, correlation_id: int = 1
) -> bytes:
    return encode_request(
        ProduceRequest(
            transactional_id=None, acks=acks, timeout=datetime.timedelta(seconds=5),
            topic_data=(TopicProduceData(name=topic, partition_data=(
                PartitionProduceData(index=0, records=records),
            )),),
        ),
        correlation_id,
    )  # fmt: skip


def produce_error(broker: BrokerProcess, records: bytes, acks: int = 1) -> int | None:
    """The partition error code of a produce request (None: connection closed, or acks=0)."""
    answers = exchange(broker, produce_payload(records, acks=acks, correlation_id=77))
    assert answers != WAITING, "no answer to a produce request and no close"
    event("closed" if answers is CLOSED else f"acks={acks} answered")
    if answers is CLOSED:
        return None
    if acks == 0:
        assert answers == [], "a response to an acks=0 produce request"
        return None
    assert len(answers) == 1, "no answer to a produce request"
    response = decode_response(PRODUCE_KEY, 9, answers[0], 77)
    partition = response.responses[0].partition_responses[0]
    return int(partition.error_code)


def valid_batch(records: list[Record]) -> bytes:
    return encode_batch(records, base_timestamp=now_ms())


# --- strategies ------------------------------------------------------------------------

small_bytes = st.binary(max_size=40)
records_strategy = st.lists(
    st.builds(
        Record,
        key=st.none() | small_bytes,
        value=st.none() | small_bytes,
        headers=st.lists(st.tuples(st.text(max_size=8), st.none() | small_bytes), max_size=3).map(
            tuple
        ),
        timestamp_delta=st.integers(0, 1000),
    ),
    min_size=1,
    max_size=8,
)


def template_frames() -> list[bytes]:
    """Valid requests: starting points that mutations turn into almost-valid ones."""
    batch = encode_batch([Record(b"k", b"v", (("h", b"x"),))], base_timestamp=1_700_000_000_000)
    return [
        encode_request(ApiVersionsV3(client_software_name="brook-test",
                                     client_software_version="1.0"), 11),
        encode_request(ApiVersionsV0(), 12),
        encode_request(MetadataRequest(
            topics=(MetadataRequestTopic(topic_id=None, name=SCRATCH),),
            allow_auto_topic_creation=True, include_topic_authorized_operations=False,
        ), 13),
        produce_payload(batch, topic=SCRATCH, correlation_id=14),
        encode_request(FetchRequest(
            max_wait=datetime.timedelta(0), min_bytes=0,
            topics=(FetchTopic(topic=STORED, partitions=(
                FetchPartition(partition=0, fetch_offset=5, partition_max_bytes=65536),
            )),),
            forgotten_topics_data=(),
        ), 15),
        encode_request(ListOffsetsRequest(
            replica_id=-1, isolation_level=0,
            topics=(ListOffsetsTopic(name=STORED, partitions=(
                ListOffsetsPartition(partition_index=0, timestamp=-2),
            )),),
        ), 16),
    ]  # fmt: skip


TEMPLATES = template_frames()


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "extend"]))
        position = draw(st.integers(0, len(frame)))
        if kind == "flip" and position < len(frame):
            frame[position] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del frame[position:]
        elif kind == "insert":
            frame[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del frame[position : position + draw(st.integers(1, 16))]
        elif kind == "extend":
            frame += draw(st.binary(min_size=1, max_size=64))
    return bytes(frame)


@st.composite
def header_then_garbage(draw: st.DrawFn) -> bytes:
    """A real API key and version, so decoding gets past the header, then random bytes."""
    api_key = draw(st.sampled_from([0, 1, 2, 3, 18, 19, 20, 22, 32, 37, 44]))
    version = draw(st.integers(0, 13))
    correlation_id = draw(st.integers(-(2**31), 2**31 - 1))
    return struct.pack(">hhi", api_key, version, correlation_id) + draw(st.binary(max_size=300))


# --- tests -----------------------------------------------------------------------------


@pytest.mark.timeout(120)
@EXAMPLES
@given(payload=st.binary(max_size=600) | header_then_garbage())
def test_garbage_frames(guarded: Guarded, payload: bytes) -> None:
    exchange_any(guarded.broker, payload)
    guarded.check()


@pytest.mark.timeout(120)
@EXAMPLES
@given(payload=mutated_frames())
def test_mutated_requests(guarded: Guarded, payload: bytes) -> None:
    exchange_any(guarded.broker, payload)
    guarded.check()


@pytest.mark.timeout(120)
@settings(EXAMPLES, max_examples=40)
@given(template=st.sampled_from(TEMPLATES), large=st.booleans(), data=st.data())
def test_truncated_frames(
    guarded: Guarded, template: bytes, large: bool, data: st.DataObject
) -> None:
    """The length prefix promises more than arrives: the connection waits alone for the
    rest, the others are served meanwhile, and closing it mid-frame harms nothing. A large
    promise takes the path that receives a frame into a buffer of its own."""
    claimed = MAX_REQUEST_BYTES if large else len(template)
    sent = data.draw(st.integers(0, len(template) - 1))
    with KafkaConnection(guarded.broker.address) as connection:
        connection.send_raw(struct.pack(">i", claimed) + template[:sent])
        guarded.check()
    guarded.check()


@pytest.mark.timeout(120)
@settings(EXAMPLES, max_examples=40)
@given(
    size=st.integers(MAX_REQUEST_BYTES + 1, 2**31 - 1) | st.integers(-(2**31), -1),
    tail=st.binary(max_size=64),
)
def test_length_prefix_above_socket_request_max_bytes(
    guarded: Guarded, size: int, tail: bytes
) -> None:
    with KafkaConnection(guarded.broker.address) as connection:
        connection.send_raw(struct.pack(">i", size) + tail)
        assert connection.is_closed_by_peer(), "broker answered a frame it must refuse"
    guarded.check()


def frame_of_exactly(size: int) -> bytes:
    """A valid produce request to the scratch topic whose frame is ``size`` bytes long."""
    filler = size
    while True:
        batch = valid_batch([Record(b"k", b"x" * filler)])
        payload = produce_payload(batch, topic=SCRATCH, correlation_id=21)
        if len(payload) == size:
            return payload
        filler += size - len(payload)


@pytest.mark.timeout(120)
def test_request_of_socket_request_max_bytes_is_served(guarded: Guarded) -> None:
    """The limit is inclusive, as Kafka's: a frame of exactly the limit is served."""
    answers = exchange(guarded.broker, frame_of_exactly(MAX_REQUEST_BYTES))
    assert isinstance(answers, list) and len(answers) == 1, answers
    response = decode_response(PRODUCE_KEY, 9, answers[0], 21)
    assert response.responses[0].partition_responses[0].error_code == ErrorCode.none
    with KafkaConnection(guarded.broker.address) as connection:
        connection.send_raw(struct.pack(">i", MAX_REQUEST_BYTES + 1))
        assert connection.is_closed_by_peer()
    guarded.check()


@pytest.mark.timeout(120)
@EXAMPLES
@given(
    api_key=st.integers(-1, 80) | st.integers(-(2**15), 2**15 - 1),
    version=st.integers(-2, 20) | st.integers(-(2**15), 2**15 - 1),
    body=st.binary(max_size=100),
)
def test_unknown_api_key_or_version(
    guarded: Guarded, api_key: int, version: int, body: bytes
) -> None:
    versions = guarded.supported.get(api_key)
    # Supported requests are covered by the garbage and mutation tests.
    assume(versions is None or not versions[0] <= version <= versions[1])
    payload = struct.pack(">hhih", api_key, version, 99, -1) + body
    answers = exchange(guarded.broker, payload)
    if api_key == API_VERSIONS_KEY:
        # Kafka answers an ApiVersions version it does not know in the v0 format with
        # UNSUPPORTED_VERSION and its list, so that the client can retry lower.
        assert isinstance(answers, list) and len(answers) == 1, answers
        response = decode_response(API_VERSIONS_KEY, 0, answers[0], 99)
        assert response.error_code == ErrorCode.unsupported_version
        assert {k.api_key: (k.min_version, k.max_version) for k in response.api_keys} == (
            guarded.supported
        )
    else:
        # Kafka closes the connection: a client cannot read an answer it did not expect.
        assert answers is CLOSED, f"expected a closed connection, got {answers!r}"
    guarded.check()


@pytest.mark.timeout(120)
@EXAMPLES
@given(
    records=records_strategy,
    position=st.integers(0, 10_000),
    xor=st.integers(1, 255),
    acks=st.sampled_from([1, -1, 0]),
    with_valid=st.sampled_from(["alone", "before", "after"]),
)
def test_produce_with_wrong_crc(
    guarded: Guarded, records: list[Record], position: int, xor: int, acks: int, with_valid: str
) -> None:
    """Any byte the CRC32C covers (or the CRC itself) changed: CORRUPT_MESSAGE, and no batch
    of the request is appended, not even a valid one next to it."""
    batch = bytearray(valid_batch(records))
    covered = list(range(17, 21)) + list(range(21, len(batch)))
    batch[covered[position % len(covered)]] ^= xor
    valid = valid_batch([Record(b"valid", b"batch")])
    payload = {"alone": bytes(batch), "before": valid + batch, "after": batch + valid}[with_valid]
    error = produce_error(guarded.broker, payload, acks)
    if acks != 0 and error is not None:
        assert error == ErrorCode.corrupt_message, ErrorCode(error)
    guarded.check()


@pytest.mark.timeout(120)
@EXAMPLES
@given(
    value=st.binary(max_size=200),
    key=st.none() | small_bytes,
    magic=st.sampled_from([0, 1]),
    form=st.sampled_from(["legacy", "v2-with-old-magic", "v2-with-unknown-magic"]),
    unknown_magic=st.integers(3, 127) | st.integers(-128, -1),
)
def test_produce_with_old_magic(
    guarded: Guarded, value: bytes, key: bytes | None, magic: int, form: str, unknown_magic: int
) -> None:
    if form == "legacy":
        records = encode_legacy_message_set(value, magic=magic, key=key)
    else:
        batch = bytearray(valid_batch([Record(key, value)]))
        batch[16] = (magic if form == "v2-with-old-magic" else unknown_magic) & 0xFF
        records = bytes(batch)
    error = produce_error(guarded.broker, records)
    assert error is not None, "connection closed instead of an error code"
    allowed = {ErrorCode.corrupt_message}
    if form != "v2-with-unknown-magic":
        allowed.add(ErrorCode.unsupported_for_message_format)
    assert error in allowed, ErrorCode(error)
    guarded.check()


@pytest.mark.timeout(120)
@EXAMPLES
@given(
    records=records_strategy,
    damage=st.sampled_from(["length-up", "length-down", "cut", "trailing-bytes"]),
    amount=st.integers(1, 200),
)
def test_produce_with_inconsistent_batch_framing(
    guarded: Guarded, records: list[Record], damage: str, amount: int
) -> None:
    """A batch whose length field disagrees with the bytes sent: CORRUPT_MESSAGE."""
    batch = bytearray(valid_batch(records))
    (length,) = struct.unpack_from(">i", batch, 8)
    if damage == "length-up":
        struct.pack_into(">i", batch, 8, length + amount)
    elif damage == "length-down":
        struct.pack_into(">i", batch, 8, max(0, length - amount))
    elif damage == "cut":
        del batch[max(1, len(batch) - amount) :]
    else:
        batch += bytes(range(amount % 256)) or b"\x00"
    error = produce_error(guarded.broker, bytes(batch))
    assert error is not None, "connection closed instead of an error code"
    assert error == ErrorCode.corrupt_message, ErrorCode(error)
    guarded.check()


@pytest.mark.timeout(60)
def test_valid_produce_to_another_topic_is_appended(guarded: Guarded) -> None:
    """The checks above are not vacuous: the same path appends a valid batch."""
    batch = valid_batch([Record(b"key", b"value", (("h", b"1"),))])
    answers = exchange(guarded.broker, produce_payload(batch, topic=SCRATCH, correlation_id=5))
    assert isinstance(answers, list) and len(answers) == 1, answers
    response = decode_response(PRODUCE_KEY, 9, answers[0], 5)
    assert response.responses[0].partition_responses[0].error_code == ErrorCode.none
    guarded.check()


MAX_VARINT = bytes.fromhex("ffffffff0f")


def flexible_frame(api_key: int, version: int, body: bytes) -> bytes:
    """A flexible request header (null client id, no tagged fields), then ``body``."""
    return struct.pack(">hhih", api_key, version, 31, -1) + b"\x00" + body


# Counts no frame can hold: kio reserved memory from them before reading (32 GiB for the
# largest varint, which aborted the process). Nulls in fields Kafka never allows null:
# kio handed them to the handlers as None.
REFUSED_FRAMES = {
    "Metadata v12, topics count max varint": flexible_frame(3, 12, MAX_VARINT + b"\x01\x00\x00"),
    "CreateTopics v5, topics count max varint": flexible_frame(19, 5, MAX_VARINT + b"\x00\x00"),
    "Produce v9, topic_data count max varint": flexible_frame(
        0, 9, b"\x00\x00\x01\x00\x00\x03\xe8" + MAX_VARINT
    ),
    "Metadata v4, topics count 2^31-1": struct.pack(">hhihi", 3, 4, 31, -1, 2**31 - 1) + b"\x01",
    "Produce v9, null topic_data": flexible_frame(0, 9, b"\x00\x00\x01\x00\x00\x03\xe8\x00\x00"),
    "ListOffsets v5, null topics": struct.pack(">hhihibi", 2, 5, 31, -1, -1, 0, -1),
    "OffsetCommit v8, null topics": flexible_frame(
        8, 8, b"\x02g\xff\xff\xff\xff\x02m\x00" + b"\x00\x00"
    ),
    "JoinGroup v5, null protocols": struct.pack(">hhih", 11, 5, 31, -1)
    + b"\x00\x01g\x00\x00\x27\x10\x00\x00\x27\x10\x00\x00\xff\xff\x00\x08consumer\xff\xff\xff\xff",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", REFUSED_FRAMES)
def test_impossible_counts_and_forbidden_nulls_close_the_connection(
    guarded: Guarded, name: str
) -> None:
    """Refused before decoding, as Kafka refuses a request it cannot parse: the
    connection is closed, the refusal counted, and nothing is logged as an error."""
    refused_before = guarded.broker.metric("brook_malformed_requests_total")
    assert exchange(guarded.broker, REFUSED_FRAMES[name]) is CLOSED
    guarded.check()
    assert guarded.broker.metric("brook_malformed_requests_total") == refused_before + 1
    assert "Traceback" not in guarded.broker.log_path.read_text(errors="replace")

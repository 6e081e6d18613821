"""Produce v0-2, which kio does not generate (Kafka 4 dropped them): a hand-written codec.

No current client sends these versions to a broker that offers v3+, but librdkafka
decides whether it may compress with gzip, snappy or lz4 by checking that the broker's
Produce range starts at v0 (Debian's kcat, on librdkafka 2.0, does). Offering them keeps
those clients compressing. The records of a v0-2 request pass through the same v2-batch
validation as any other version, so the old message formats are refused as usual.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Mapping
from typing import Any

from kio.schema.produce.v3.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.types import TopicName
from kio.static.primitive import Records, i16, i32, i32Timedelta

LAST_LEGACY_VERSION = 2

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class _Reader:
    def __init__(self, frame: memoryview, offset: int) -> None:
        self._frame = frame
        self.offset = offset

    def _take(self, size: int) -> memoryview:
        end = self.offset + size
        if size < 0 or end > len(self._frame):
            raise ValueError("produce request ends early")
        chunk = self._frame[self.offset : end]
        self.offset = end
        return chunk

    def int16(self) -> i16:
        value: i16 = _I16.unpack(self._take(2))[0]
        return value

    def int32(self) -> i32:
        value: i32 = _I32.unpack(self._take(4))[0]
        return value

    def topic_name(self) -> TopicName:
        return TopicName(bytes(self._take(self.int16())).decode())

    def records(self) -> Records | None:
        size = self.int32()
        return None if size == -1 else Records(bytes(self._take(size)))

    def count(self) -> int:
        size = self.int32()
        if size < 0:
            raise ValueError("negative array length")
        return size


def decode(frame: memoryview, offset: int) -> ProduceRequest:
    """Read a v0-2 body (from ``offset``, after the header) into the v3 request type."""
    reader = _Reader(frame, offset)
    acks = reader.int16()
    timeout_ms = reader.int32()
    topics = []
    for _ in range(reader.count()):
        name = reader.topic_name()
        partitions = tuple(
            PartitionProduceData(index=reader.int32(), records=reader.records())
            for _ in range(reader.count())
        )
        topics.append(TopicProduceData(name=name, partition_data=partitions))
    return ProduceRequest(
        transactional_id=None,
        acks=acks,
        timeout=i32Timedelta.parse(datetime.timedelta(milliseconds=timeout_ms)),
        topic_data=tuple(topics),
    )


def encode(version: int, correlation_id: int, body: Mapping[str, Any]) -> bytes:
    """The v0-2 response frame for the same body a v3+ response is built from."""
    parts = [_I32.pack(correlation_id), _I32.pack(len(body["responses"]))]
    for topic in body["responses"]:
        name = topic["name"].encode()
        parts += [_I16.pack(len(name)), name, _I32.pack(len(topic["partition_responses"]))]
        for partition in topic["partition_responses"]:
            parts += [
                _I32.pack(partition["index"]),
                _I16.pack(int(partition["error_code"])),
                _I64.pack(partition["base_offset"]),
            ]
            if version >= 2:
                append_time = partition.get("log_append_time")
                millis = -1 if append_time is None else (append_time - _EPOCH) // _MILLISECOND
                parts.append(_I64.pack(millis))
    if version >= 1:
        parts.append(_I32.pack(0))  # throttle time
    payload = b"".join(parts)
    return _I32.pack(len(payload)) + payload


_MILLISECOND = datetime.timedelta(milliseconds=1)

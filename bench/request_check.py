"""What the frame check costs per request, beside kio's decoding of the same frame.

    python bench/request_check.py [--seconds 1]

The check walks every count and length of a request before kio decodes it (see
``brook_broker/protocol/request_check.py``). This prints, for a few requests typical of
the hot path, the microseconds per call of the check alone and of the whole
``decode_request`` (check included).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import time
import uuid
from collections.abc import Callable

from brook_broker.api.api_versions import SUPPORTED_VERSIONS
from brook_broker.protocol.codec import decode_request
from brook_broker.protocol.request_check import check_request
from kio.schema.fetch.v12 import request as fetch
from kio.schema.metadata.v12 import request as metadata
from kio.schema.produce.v9 import request as produce
from kio.schema.request_header.v2.header import RequestHeader
from kio.serial import entity_writer


def encode(body: object) -> memoryview:
    parts: list[bytes] = []

    class Sink:
        write = parts.append

    entity_type = type(body)
    header = RequestHeader(
        request_api_key=entity_type.__api_key__,
        request_api_version=entity_type.__version__,
        correlation_id=1,
        client_id="bench",
    )
    entity_writer(RequestHeader)(Sink, header)
    entity_writer(entity_type)(Sink, body)
    return memoryview(b"".join(parts)).toreadonly()


def produce_request(record_bytes: int) -> memoryview:
    return encode(
        produce.ProduceRequest(
            transactional_id=None,
            acks=-1,
            timeout=datetime.timedelta(seconds=30),
            topic_data=(
                produce.TopicProduceData(
                    name="orders",
                    partition_data=(
                        produce.PartitionProduceData(index=0, records=b"r" * record_bytes),
                    ),
                ),
            ),
        )
    )


def fetch_request(partitions: int) -> memoryview:
    return encode(
        fetch.FetchRequest(
            replica_id=-1,
            max_wait=datetime.timedelta(milliseconds=500),
            min_bytes=1,
            max_bytes=52428800,
            isolation_level=0,
            session_id=0,
            session_epoch=-1,
            topics=(
                fetch.FetchTopic(
                    topic="orders",
                    partitions=tuple(
                        fetch.FetchPartition(
                            partition=index,
                            current_leader_epoch=0,
                            fetch_offset=1000,
                            last_fetched_epoch=-1,
                            log_start_offset=-1,
                            partition_max_bytes=1048576,
                        )
                        for index in range(partitions)
                    ),
                ),
            ),
            forgotten_topics_data=(),
            rack_id="",
        )
    )


def metadata_request(topics: int) -> memoryview:
    return encode(
        metadata.MetadataRequest(
            topics=tuple(
                metadata.MetadataRequestTopic(topic_id=uuid.UUID(int=0), name=f"topic-{index}")
                for index in range(topics)
            ),
            allow_auto_topic_creation=False,
            include_topic_authorized_operations=False,
        )
    )


def per_call_us(call: Callable[[], object], seconds: float) -> float:
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(100):
            call()
        calls += 100
    return elapsed / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    seconds = parser.parse_args().seconds
    requests = {
        "Produce v9, 1 KB records": produce_request(1024),
        "Produce v9, 1 MB records": produce_request(1024 * 1024),
        "Fetch v12, 10 partitions": fetch_request(10),
        "Metadata v12, 3 topics": metadata_request(3),
    }
    print(f"{'request':<28}{'bytes':>10}{'check µs':>11}{'decode µs':>11}{'share':>8}")
    for name, frame in requests.items():
        api_key, version = frame[0] << 8 | frame[1], frame[2] << 8 | frame[3]
        check = per_call_us(functools.partial(check_request, frame, api_key, version), seconds)
        decode = per_call_us(functools.partial(decode_request, frame, SUPPORTED_VERSIONS), seconds)
        print(f"{name:<28}{len(frame):>10}{check:>11.2f}{decode:>11.2f}{check / decode:>8.0%}")


if __name__ == "__main__":
    main()

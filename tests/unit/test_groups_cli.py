"""``brook groups``: the lag rule, assignment decoding, the tables, and the reader's
requests against a scripted cluster (no sockets)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from brook_broker.protocol.client import KafkaConnectionError
from brook_cli.main import format_group_lag, format_group_list, parse_arguments
from brook_client.admin import KafkaAdmin
from brook_client.group_admin import (
    GroupDescription,
    GroupLag,
    GroupMember,
    GroupNotFound,
    PartitionLag,
    decode_assignment,
    lag_rows,
)
from brook_client.lag import OffsetReset, partition_lag
from brook_client.session import (
    BrokersUnreachable,
    GroupsError,
    KafkaRequestError,
    parse_bootstrap,
)
from kio.index import load_response_schema
from kio.schema.consumer_protocol_assignment.v0.data import (
    ConsumerProtocolAssignment as AssignmentV0,
)
from kio.schema.consumer_protocol_assignment.v0.data import TopicPartition as TopicPartitionV0
from kio.schema.consumer_protocol_assignment.v3.data import (
    ConsumerProtocolAssignment as AssignmentV3,
)
from kio.schema.consumer_protocol_assignment.v3.data import TopicPartition as TopicPartitionV3
from kio.schema.errors import ErrorCode
from kio.serial import entity_writer
from kio.static.primitive import i32

from tests.support.entities import build

# --- pure parts --------------------------------------------------------------------------


def test_bootstrap_lists() -> None:
    assert parse_bootstrap("127.0.0.1:9092, broker-1:9093,[::1]:9094") == [
        ("127.0.0.1", 9092),
        ("broker-1", 9093),
        ("::1", 9094),
    ]
    for bad in ("", "host", "host:", ":9092", "host:port", "host:0", "host:70000", "a:1,,b:2"):
        with pytest.raises(ValueError, match="expected HOST:PORT"):
            parse_bootstrap(bad)


@pytest.mark.parametrize(
    ("committed", "log_start", "log_end", "reset", "lag"),
    [
        (5, 0, 12, OffsetReset.LATEST, 7),
        (5, 0, 12, OffsetReset.EARLIEST, 7),  # a committed offset wins over the policy
        (12, 0, 12, OffsetReset.LATEST, 0),
        (None, 3, 12, OffsetReset.LATEST, 0),  # would start at the log end
        (None, 3, 12, OffsetReset.EARLIEST, 9),  # would start at the log start
        (None, None, 12, OffsetReset.EARLIEST, None),
        (5, 0, None, OffsetReset.LATEST, None),  # no leader answered
    ],
)
def test_lag_rule(
    committed: int | None,
    log_start: int | None,
    log_end: int | None,
    reset: OffsetReset,
    lag: int | None,
) -> None:
    assert partition_lag(committed, log_start, log_end, reset) == lag


def encode(entity: Any) -> bytes:
    parts: list[bytes] = []

    class Sink:
        write = parts.append

    entity_writer(type(entity))(Sink(), entity)
    return b"".join(parts)


def assignment_bytes(version: int, *topics: tuple[str, tuple[int, ...]]) -> bytes:
    """A consumer protocol assignment as consumers' assignors write it."""
    if version == 0:
        entity: Any = AssignmentV0(
            assigned_partitions=tuple(
                TopicPartitionV0(topic=t, partitions=tuple(i32(p) for p in ps)) for t, ps in topics
            )
        )
    else:
        entity = AssignmentV3(
            assigned_partitions=tuple(
                TopicPartitionV3(topic=t, partitions=tuple(i32(p) for p in ps)) for t, ps in topics
            ),
            user_data=b"sticky",
        )
    return struct.pack(">h", version) + encode(entity)


def test_assignment_decoding() -> None:
    assert decode_assignment(assignment_bytes(0, ("orders", (0, 2)), ("audit", (1,)))) == (
        ("orders", 0),
        ("orders", 2),
        ("audit", 1),
    )
    assert decode_assignment(assignment_bytes(3, ("orders", (1,)))) == (("orders", 1),)
    # A future version appends fields: what is known is still read.
    future = bytearray(assignment_bytes(3, ("orders", (4,))) + b"\x00\x00\x00\x07")
    future[0:2] = struct.pack(">h", 9)
    assert decode_assignment(bytes(future)) == (("orders", 4),)
    assert decode_assignment(b"") == ()  # a member between rebalances
    for bad in (b"\x00", b"\xff\xff\x00\x00\x00\x01", b"\x00\x00\x00\x00\x00\x01\x00\x05ab"):
        with pytest.raises(ValueError, match="not a consumer protocol assignment"):
            decode_assignment(bad)


def member(member_id: str, *assignment: tuple[str, int]) -> GroupMember:
    return GroupMember(member_id, None, f"client-{member_id}", "/127.0.0.1", assignment)


def test_rows_join_committed_and_assigned_partitions() -> None:
    description = GroupDescription(
        "payments",
        "Stable",
        "consumer",
        "range",
        1,
        (member("m1", ("orders", 1), ("orders", 0)), member("m2", ("orders", 2))),
    )
    committed = {("orders", 0): 5, ("orders", 1): 7, ("archive", 0): 3}
    ends = {("orders", 0): 10, ("orders", 1): 7, ("orders", 2): 4, ("archive", 0): 3}
    rows = lag_rows(description, committed, {("orders", 2): 1}, ends, OffsetReset.EARLIEST)
    assert rows == (
        PartitionLag("archive", 0, 3, 3, 0),  # committed, no member has it
        PartitionLag("orders", 0, 5, 10, 5, "m1", "/127.0.0.1", "client-m1"),
        PartitionLag("orders", 1, 7, 7, 0, "m1", "/127.0.0.1", "client-m1"),
        PartitionLag("orders", 2, None, 4, 3, "m2", "/127.0.0.1", "client-m2"),
    )
    assert GroupLag(description, rows).total_lag == 8
    latest = lag_rows(description, committed, {}, ends, OffsetReset.LATEST)
    assert latest[3].lag == 0


def test_describe_table() -> None:
    description = GroupDescription(
        "payments", "Stable", "consumer", "range", 2, (member("m1", ("orders", 0)),)
    )
    group = GroupLag(
        description,
        (
            PartitionLag("orders", 0, 5, 10, 5, "m1", "/127.0.0.1", "client-m1"),
            PartitionLag("orders", 1, None, None, None),
        ),
    )
    assert format_group_lag(group, OffsetReset.LATEST).splitlines() == [
        "GROUP     TOPIC   PARTITION  CURRENT-OFFSET  LOG-END-OFFSET  LAG  CONSUMER-ID  HOST"
        "        CLIENT-ID",
        "payments  orders  0          5               10              5    m1           "
        "/127.0.0.1  client-m1",
        "payments  orders  1          -               -               -    -            -"
        "           -",
        "",
        "Group 'payments' is Stable with 1 member (coordinator: broker 2); total lag 5. "
        "Partitions without a committed offset count lag from --reset latest.",
    ]


def test_list_table() -> None:
    groups = [
        GroupDescription("a", "Empty", "consumer", "", 0, ()),
        GroupDescription("billing", "Stable", "consumer", "range", 2, (member("m1"), member("m2"))),
    ]
    assert format_group_list(groups).splitlines() == [
        "GROUP    STATE   MEMBERS  ASSIGNMENT-STRATEGY  COORDINATOR",
        "a        Empty   0        -                    0",
        "billing  Stable  2        range                2",
    ]


def test_command_line() -> None:
    options, specs = parse_arguments(
        ["groups", "describe", "payments", "--bootstrap", "b0:9092,b1:9092", "--reset", "earliest"]
    )
    assert (options.command, options.groups_command, options.group) == (
        "groups",
        "describe",
        "payments",
    )
    assert options.reset is OffsetReset.EARLIEST and options.bootstrap == "b0:9092,b1:9092"
    assert specs == []
    options, _ = parse_arguments(["groups", "list", "--bootstrap", "b0:9092"])
    assert options.groups_command == "list" and options.timeout > 0
    for bad in (
        ["groups", "describe", "payments"],  # no --bootstrap
        ["groups", "describe", "payments", "--bootstrap", "b0"],
        ["groups", "describe", "payments", "--bootstrap", "b0:1", "--reset", "none"],
        ["groups", "list", "--bootstrap", "b0:1", "--", "--flag"],
    ):
        with pytest.raises(SystemExit) as exited:
            parse_arguments(bad)
        assert exited.value.code == 2


# --- the reader against a scripted cluster -------------------------------------------------

NEW_VERSIONS = {2: (1, 7), 3: (1, 12), 9: (1, 8), 10: (0, 4), 15: (0, 5), 16: (0, 4), 18: (0, 3)}
OLD_VERSIONS = {2: (1, 1), 3: (1, 1), 9: (2, 2), 10: (1, 1), 15: (0, 0), 16: (0, 0), 18: (0, 0)}
Answer = Mapping[str, Any] | Exception


@dataclass
class FakeCluster:
    """Brokers ``b<node>:9092`` answering from scripts: per API key, a function of the
    node, version and request body giving the body of the response (or an exception)."""

    versions: Mapping[int, tuple[int, int]]
    handlers: dict[int, Callable[[int, int, Mapping[str, Any]], Answer]] = field(
        default_factory=dict
    )
    down: set[int] = field(default_factory=set)
    requests: list[tuple[int, int, int]] = field(default_factory=list)
    """(node, API key, version) of every request."""

    def __post_init__(self) -> None:
        self.handlers.setdefault(18, self.api_versions)

    def api_versions(self, node: int, version: int, body: Mapping[str, Any]) -> Answer:
        return {
            "error_code": 0,
            "api_keys": [
                {"api_key": key, "min_version": low, "max_version": high}
                for key, (low, high) in self.versions.items()
            ],
        }

    def connect(self, host: str, port: int, client_id: str) -> Any:
        return FakeClient(self, int(host.removeprefix("b")))

    def asked(self, api_key: int) -> list[int]:
        return [node for node, key, _ in self.requests if key == api_key]


@dataclass
class FakeClient:
    cluster: FakeCluster
    node: int

    async def request(
        self, api_key: int, api_version: int, body: Mapping[str, Any], *, timeout: float | None
    ) -> Any:
        low, high = self.cluster.versions[api_key]
        assert low <= api_version <= high, (api_key, api_version)
        if self.node in self.cluster.down:
            raise KafkaConnectionError(f"cannot connect to b{self.node}:9092: refused")
        self.cluster.requests.append((self.node, api_key, api_version))
        answer = self.cluster.handlers[api_key](self.node, api_version, body)
        if isinstance(answer, Exception):
            raise answer
        return build(load_response_schema(api_key, api_version), answer)

    async def close(self) -> None:
        pass


LEADERS = {("orders", 0): 0, ("orders", 1): 1, ("orders", 2): 2, ("archive", 0): 1}
LOG_ENDS = {("orders", 0): 10, ("orders", 1): 7, ("orders", 2): 4, ("archive", 0): 3}
LOG_STARTS = {("orders", 0): 0, ("orders", 1): 0, ("orders", 2): 1, ("archive", 0): 0}
COMMITTED = {("orders", 0): 5, ("orders", 1): 7, ("archive", 0): 3}


def metadata(
    leaders: Mapping[tuple[str, int], int] = LEADERS,
) -> Callable[[int, int, Mapping[str, Any]], Answer]:
    def answer(node: int, version: int, body: Mapping[str, Any]) -> Answer:
        topics = []
        for requested in body["topics"]:
            name = requested["name"]
            partitions = [
                {"partition_index": p, "leader_id": leader, "error_code": 0}
                for (t, p), leader in sorted(leaders.items())
                if t == name
            ]
            code = 0 if partitions else ErrorCode.unknown_topic_or_partition
            topics.append({"name": name, "error_code": code, "partitions": partitions})
        brokers = [{"node_id": n, "host": f"b{n}", "port": 9092} for n in range(3)]
        return {"brokers": brokers, "topics": topics}

    return answer


def find_coordinator(*script: int | ErrorCode) -> Callable[[int, int, Mapping[str, Any]], Answer]:
    """Answers with the next node id (or error) of ``script``, the last one from then on."""
    answers = list(script)

    def answer(node: int, version: int, body: Mapping[str, Any]) -> Answer:
        step = answers.pop(0) if len(answers) > 1 else answers[0]
        found = {
            "key": body["key"],
            "error_code": step if isinstance(step, ErrorCode) else 0,
            "error_message": None,
            "node_id": -1 if isinstance(step, ErrorCode) else step,
            "host": "" if isinstance(step, ErrorCode) else f"b{step}",
            "port": 9092,
        }
        return {"coordinators": [found]} if version >= 4 else found

    return answer


def described(state: str = "Stable", members: Any = None) -> dict[str, Any]:
    return {
        "error_code": 0,
        "group_id": "payments",
        "group_state": state,
        "protocol_type": "consumer",
        "protocol_data": "range",
        "members": members
        if members is not None
        else [
            {
                "member_id": "m1",
                "client_id": "client-m1",
                "client_host": "/127.0.0.1",
                "member_assignment": assignment_bytes(1, ("orders", (0, 1))),
            },
            {
                "member_id": "m2",
                "client_id": "client-m2",
                "client_host": "/127.0.0.2",
                "member_assignment": assignment_bytes(0, ("orders", (2,))),
            },
        ],
    }


def describe_groups(
    coordinator: int, group: Mapping[str, Any]
) -> Callable[[int, int, Mapping[str, Any]], Answer]:
    def answer(node: int, version: int, body: Mapping[str, Any]) -> Answer:
        if node != coordinator:
            return {"groups": [{**group, "error_code": ErrorCode.not_coordinator}]}
        return {"groups": [group]}

    return answer


def offset_fetch(
    coordinator: int, committed: Mapping[tuple[str, int], int] = COMMITTED
) -> Callable[[int, int, Mapping[str, Any]], Answer]:
    def answer(node: int, version: int, body: Mapping[str, Any]) -> Answer:
        assert body["topics"] is None and body["groups"][0]["topics"] is None  # all of them
        topics: dict[str, list[dict[str, Any]]] = {}
        for (topic, partition), offset in sorted(committed.items()):
            topics.setdefault(topic, []).append(
                {"partition_index": partition, "committed_offset": offset, "error_code": 0}
            )
        found = {
            "group_id": "payments",
            "error_code": 0 if node == coordinator else ErrorCode.not_coordinator,
            "topics": [{"name": name, "partitions": ps} for name, ps in topics.items()],
        }
        return {"groups": [found]} if version >= 8 else found

    return answer


def list_offsets(
    leaders: Mapping[tuple[str, int], int] = LEADERS,
) -> Callable[[int, int, Mapping[str, Any]], Answer]:
    def answer(node: int, version: int, body: Mapping[str, Any]) -> Answer:
        topics = []
        for topic in body["topics"]:
            partitions = []
            for requested in topic["partitions"]:
                key = (topic["name"], requested["partition_index"])
                if leaders[key] != node:
                    code, offset = ErrorCode.not_leader_or_follower, -1
                else:
                    offsets = LOG_ENDS if requested["timestamp"] == -1 else LOG_STARTS
                    code, offset = ErrorCode.none, offsets[key]
                partitions.append({"partition_index": key[1], "error_code": code, "offset": offset})
            topics.append({"name": topic["name"], "partitions": partitions})
        return {"topics": topics}

    return answer


def healthy_cluster(versions: Mapping[int, tuple[int, int]], coordinator: int = 1) -> FakeCluster:
    return FakeCluster(
        versions,
        {
            3: metadata(),
            10: find_coordinator(coordinator),
            15: describe_groups(coordinator, described()),
            9: offset_fetch(coordinator),
            2: list_offsets(),
        },
    )


def reader(cluster: FakeCluster, bootstrap: str = "b0:9092", **options: Any) -> KafkaAdmin:
    return KafkaAdmin(bootstrap, connect=cluster.connect, **options)


@pytest.mark.parametrize("versions", [NEW_VERSIONS, OLD_VERSIONS], ids=["newest", "oldest"])
async def test_group_lag_from_coordinator_and_leaders(versions: Mapping[int, Any]) -> None:
    cluster = healthy_cluster(versions)
    async with reader(cluster) as groups:
        lag = await groups.group_lag("payments", OffsetReset.EARLIEST)
    assert (lag.description.state, lag.description.protocol, lag.description.coordinator) == (
        "Stable",
        "range",
        1,
    )
    assert [(m.member_id, m.assignment) for m in lag.description.members] == [
        ("m1", (("orders", 0), ("orders", 1))),
        ("m2", (("orders", 2),)),
    ]
    assert [
        (row.topic, row.partition, row.committed_offset, row.log_end_offset, row.lag, row.member_id)
        for row in lag.partitions
    ] == [
        ("archive", 0, 3, 3, 0, None),
        ("orders", 0, 5, 10, 5, "m1"),
        ("orders", 1, 7, 7, 0, "m1"),
        ("orders", 2, None, 4, 3, "m2"),  # uncommitted: earliest starts at log start 1
    ]
    assert sorted(cluster.asked(15)) == [1] and sorted(cluster.asked(9)) == [1]
    # One ListOffsets per leader for the log ends, one more for the uncommitted partition.
    assert sorted(cluster.asked(2)) == [0, 1, 2, 2]


async def test_coordinator_is_found_again_while_it_moves() -> None:
    cluster = healthy_cluster(NEW_VERSIONS, coordinator=2)
    # The offsets topic is being made, then an outdated answer, then the right one.
    cluster.handlers[10] = find_coordinator(ErrorCode.coordinator_not_available, 1, 2)
    async with reader(cluster) as groups:
        lag = await groups.group_lag("payments")
    assert lag.description.coordinator == 2
    assert cluster.asked(15) == [1, 2]  # NOT_COORDINATOR from broker 1
    assert cluster.asked(9) == [2]  # the coordinator found is remembered
    assert len(cluster.asked(10)) == 3
    assert [row.lag for row in lag.partitions] == [0, 5, 0, 0]  # latest: uncommitted lag 0


async def test_coordinator_that_cannot_be_reached_is_replaced() -> None:
    cluster = healthy_cluster(NEW_VERSIONS, coordinator=2)
    cluster.handlers[10] = find_coordinator(1, 2)
    cluster.down = {1}
    async with reader(cluster, "b1:9092,b0:9092") as groups:
        assert (await groups.describe_group("payments")).coordinator == 2


async def test_no_coordinator_within_the_retry_timeout() -> None:
    cluster = healthy_cluster(NEW_VERSIONS)
    cluster.handlers[10] = find_coordinator(ErrorCode.coordinator_not_available)
    async with reader(cluster, retry_timeout=0.3) as groups:
        with pytest.raises(GroupsError, match=r"no coordinator of group 'payments'.*COORDINATOR_"):
            await groups.group_lag("payments")
    assert 2 <= len(cluster.asked(10)) < 10  # retried, with a pause between tries


async def test_unknown_group() -> None:
    cluster = healthy_cluster(NEW_VERSIONS)
    dead = {**described("Dead", []), "protocol_type": "", "protocol_data": ""}
    cluster.handlers[15] = describe_groups(1, dead)
    cluster.handlers[9] = offset_fetch(1, {})
    async with reader(cluster) as groups:
        with pytest.raises(GroupNotFound, match=r"'payments' does not exist .*broker 1.* Dead"):
            await groups.group_lag("payments")


async def test_empty_group_with_committed_offsets() -> None:
    """Consumers that commit but have left (or assign partitions themselves)."""
    cluster = healthy_cluster(NEW_VERSIONS)
    cluster.handlers[15] = describe_groups(1, described("Empty", []))
    async with reader(cluster) as groups:
        lag = await groups.group_lag("payments")
    assert [(row.topic, row.partition, row.lag, row.member_id) for row in lag.partitions] == [
        ("archive", 0, 0, None),
        ("orders", 0, 5, None),
        ("orders", 1, 0, None),
    ]


async def test_log_end_offsets_follow_leaders_that_move() -> None:
    cluster = healthy_cluster(NEW_VERSIONS)
    moved = {**LEADERS, ("orders", 0): 2}
    # Metadata still names broker 0 at first; broker 0 says it no longer leads.
    answers = [metadata(), metadata(moved)]
    cluster.handlers[3] = lambda node, version, body: answers[min(len(cluster.asked(3)), 2) - 1](
        node, version, body
    )
    cluster.handlers[2] = list_offsets(moved)
    async with reader(cluster) as groups:
        lag = await groups.group_lag("payments")
    assert [row.log_end_offset for row in lag.partitions] == [3, 10, 7, 4]
    assert cluster.asked(2).count(2) == 2  # orders-2 first, then orders-0 too


async def test_partition_without_leader_has_unknown_lag() -> None:
    cluster = healthy_cluster(NEW_VERSIONS)
    cluster.handlers[3] = metadata({**LEADERS, ("orders", 0): -1})
    async with reader(cluster, retry_timeout=0.3) as groups:
        lag = await groups.group_lag("payments")
    row = lag.partitions[1]
    assert (row.topic, row.partition, row.committed_offset, row.log_end_offset, row.lag) == (
        "orders",
        0,
        5,
        None,
        None,
    )


async def test_unreachable_bootstrap() -> None:
    cluster = healthy_cluster(NEW_VERSIONS)
    cluster.down = {0, 1}
    async with reader(cluster, "b0:9092,b1:9092") as groups:
        with pytest.raises(BrokersUnreachable, match=r"b0:9092: refused; .*b1:9092: refused"):
            await groups.group_lag("payments")


async def test_brokers_without_group_apis() -> None:
    versions = {key: span for key, span in NEW_VERSIONS.items() if key not in (9, 15, 16)}
    async with reader(healthy_cluster(versions)) as groups:
        with pytest.raises(
            KafkaRequestError, match=r"do not implement DescribeGroups \(API key 15\)"
        ):
            await groups.group_lag("payments")


async def test_list_groups_asks_every_broker() -> None:
    cluster = healthy_cluster(NEW_VERSIONS)
    listed = {0: [], 1: ["payments"], 2: ["audit"]}
    cluster.handlers[16] = lambda node, version, body: {
        "error_code": 0,
        "groups": [{"group_id": g, "protocol_type": "consumer"} for g in listed[node]],
    }
    audit = {**described("Empty", []), "group_id": "audit"}
    cluster.handlers[15] = lambda node, version, body: {
        "groups": [audit if body["groups"] == ["audit"] else described()]
    }
    async with reader(cluster) as groups:
        found = await groups.list_groups()
    assert [(g.group_id, g.state, len(g.members)) for g in found] == [
        ("audit", "Empty", 0),
        ("payments", "Stable", 2),
    ]
    assert sorted(cluster.asked(16)) == [0, 1, 2]

"""ApiVersions: the APIs and versions this broker implements, advertised exactly (the
dispatcher of each listener answers it with what that listener serves)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
OFFSET_COMMIT = 8
OFFSET_FETCH = 9
FIND_COORDINATOR = 10
JOIN_GROUP = 11
HEARTBEAT = 12
LEAVE_GROUP = 13
SYNC_GROUP = 14
DESCRIBE_GROUPS = 15
LIST_GROUPS = 16
API_VERSIONS = 18
CREATE_TOPICS = 19
DELETE_TOPICS = 20
DELETE_RECORDS = 21
INIT_PRODUCER_ID = 22
OFFSET_FOR_LEADER_EPOCH = 23
DESCRIBE_CONFIGS = 32
DESCRIBE_LOG_DIRS = 35
CREATE_PARTITIONS = 37
DELETE_GROUPS = 42
ELECT_LEADERS = 43
INCREMENTAL_ALTER_CONFIGS = 44
ALTER_PARTITION_REASSIGNMENTS = 45
LIST_PARTITION_REASSIGNMENTS = 46
OFFSET_DELETE = 47
DESCRIBE_CLUSTER = 60
BROKER_HEARTBEAT = 63
ADD_RAFT_VOTER = 80
REMOVE_RAFT_VOTER = 81

SUPPORTED_VERSIONS: Mapping[int, tuple[int, int]] = {
    PRODUCE: (0, 9),  # 0-2 only so that librdkafka compresses; see legacy_produce
    FETCH: (4, 12),  # 13+ addresses topics by id
    LIST_OFFSETS: (1, 7),
    METADATA: (1, 12),  # 13 adds a top-level error code; clients work with 12
    OFFSET_COMMIT: (2, 8),  # 9 is the consumer protocol of KIP-848
    OFFSET_FETCH: (1, 8),
    FIND_COORDINATOR: (0, 4),
    JOIN_GROUP: (0, 9),
    HEARTBEAT: (0, 4),
    LEAVE_GROUP: (0, 5),
    SYNC_GROUP: (0, 5),
    DESCRIBE_GROUPS: (0, 5),
    LIST_GROUPS: (0, 4),
    API_VERSIONS: (0, 3),
    CREATE_TOPICS: (2, 7),
    DELETE_TOPICS: (1, 6),
    DELETE_RECORDS: (0, 2),
    INIT_PRODUCER_ID: (0, 4),
    OFFSET_FOR_LEADER_EPOCH: (2, 4),  # 0-1 lack the current leader epoch
    DESCRIBE_CONFIGS: (1, 4),
    DESCRIBE_LOG_DIRS: (1, 4),
    CREATE_PARTITIONS: (0, 3),
    DELETE_GROUPS: (0, 2),
    ELECT_LEADERS: (0, 2),
    INCREMENTAL_ALTER_CONFIGS: (0, 1),
    ALTER_PARTITION_REASSIGNMENTS: (0, 0),
    LIST_PARTITION_REASSIGNMENTS: (0, 0),
    OFFSET_DELETE: (0, 0),
    DESCRIBE_CLUSTER: (0, 1),
    BROKER_HEARTBEAT: (0, 1),
    ADD_RAFT_VOTER: (0, 0),
    REMOVE_RAFT_VOTER: (0, 0),
}


def api_versions_body(
    versions: Mapping[int, tuple[int, int]] = SUPPORTED_VERSIONS,
) -> Mapping[str, Any]:
    """The ApiVersions answer listing ``versions``; each listener advertises its own."""
    return {
        "error_code": 0,
        "api_keys": [
            {"api_key": key, "min_version": low, "max_version": high}
            for key, (low, high) in sorted(versions.items())
        ],
    }

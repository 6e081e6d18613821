"""The advertised API versions: exactly what is implemented, and all known to the codec."""

from __future__ import annotations

from brook_broker.api.api_versions import SUPPORTED_VERSIONS, api_versions_body
from brook_broker.api.dispatcher import HANDLERS
from kio.index import load_request_schema, load_response_schema


def test_every_advertised_api_has_a_handler_and_only_those() -> None:
    # ApiVersions is answered by each listener's dispatcher, with what that listener serves.
    assert HANDLERS.keys() | {18} == SUPPORTED_VERSIONS.keys()


def test_the_advertised_versions() -> None:
    assert dict(SUPPORTED_VERSIONS) == {
        0: (0, 9),  # Produce
        1: (4, 12),  # Fetch
        2: (1, 7),  # ListOffsets
        3: (1, 12),  # Metadata
        8: (2, 8),  # OffsetCommit
        9: (1, 8),  # OffsetFetch
        10: (0, 4),  # FindCoordinator
        11: (0, 9),  # JoinGroup
        12: (0, 4),  # Heartbeat
        13: (0, 5),  # LeaveGroup
        14: (0, 5),  # SyncGroup
        15: (0, 5),  # DescribeGroups
        16: (0, 4),  # ListGroups
        18: (0, 3),  # ApiVersions
        19: (2, 7),  # CreateTopics
        20: (1, 6),  # DeleteTopics
        21: (0, 2),  # DeleteRecords
        22: (0, 4),  # InitProducerId
        23: (2, 4),  # OffsetForLeaderEpoch
        32: (1, 4),  # DescribeConfigs
        35: (1, 4),  # DescribeLogDirs
        37: (0, 3),  # CreatePartitions
        42: (0, 2),  # DeleteGroups
        43: (0, 2),  # ElectLeaders
        44: (0, 1),  # IncrementalAlterConfigs
        45: (0, 0),  # AlterPartitionReassignments
        46: (0, 0),  # ListPartitionReassignments
        47: (0, 0),  # OffsetDelete
        60: (0, 1),  # DescribeCluster
        63: (0, 1),  # BrokerHeartbeat
        80: (0, 0),  # AddRaftVoter
        81: (0, 0),  # RemoveRaftVoter
    }


def test_every_advertised_version_can_be_decoded_and_encoded() -> None:
    for api_key, (low, high) in SUPPORTED_VERSIONS.items():
        if api_key == 0:
            low = 3  # Produce 0-2 have a codec of their own: test_legacy_produce.py
        for version in range(low, high + 1):
            assert load_request_schema(api_key, version).__api_key__ == api_key
            assert load_response_schema(api_key, version).__version__ == version


def test_api_versions_body_lists_the_table() -> None:
    listed = {
        entry["api_key"]: (entry["min_version"], entry["max_version"])
        for entry in api_versions_body()["api_keys"]
    }
    assert listed == dict(SUPPORTED_VERSIONS)

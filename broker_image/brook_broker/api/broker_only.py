"""Requests that only brokers may send, and the answer anyone else gets.

Brokers send these to each other on the internal listener, where they prove themselves
with the cluster secret. On the client listener each is answered
CLUSTER_AUTHORIZATION_FAILED, as Kafka answers a principal without ClusterAction (Alter
for voter changes) on the cluster. Otherwise any client could fence a healthy broker or
take it out of every ISR (BrokerHeartbeat), change the metadata quorum (AddRaftVoter,
RemoveRaftVoter), or act as a follower: a Fetch naming a replica id tells the leader how
far that replica's log goes, which moves the high watermark and the ISR, and a
ListOffsets naming one is answered past the high watermark.

OffsetForLeaderEpoch also carries a replica id, but is answered the same for anyone (it
only reads, and consumers send it after leader changes), so it is not listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..protocol.codec import Request
from .api_versions import (
    ADD_RAFT_VOTER,
    BROKER_HEARTBEAT,
    FETCH,
    LIST_OFFSETS,
    REMOVE_RAFT_VOTER,
    SUPPORTED_VERSIONS,
)
from .errors import count_error

NOT_ADVERTISED_TO_CLIENTS = frozenset({BROKER_HEARTBEAT})
"""Left out of ApiVersions on the client listener: no client ever sends them. The voter
changes stay listed there, as Kafka lists them on broker listeners: admin tools send
them, and learn from the refusal that they are not allowed."""

CLIENT_VERSIONS: Mapping[int, tuple[int, int]] = {
    key: versions
    for key, versions in SUPPORTED_VERSIONS.items()
    if key not in NOT_ADVERTISED_TO_CLIENTS
}

_DENIED = ErrorCode.cluster_authorization_failed
_MESSAGE = "Only brokers may send this request, on the internal listener"


def refusal(request: Request) -> Mapping[str, Any] | None:
    """The answer to a request only brokers may send, or None for any other request."""
    key = request.api_key
    body = request.body
    if key == BROKER_HEARTBEAT:
        answer: Mapping[str, Any] = {"error_code": _DENIED, "is_fenced": True}
    elif key in (ADD_RAFT_VOTER, REMOVE_RAFT_VOTER):
        answer = {"error_code": _DENIED, "error_message": _MESSAGE}
    elif key == FETCH and _replica_id(body) >= 0:
        answer = {
            "error_code": _DENIED,
            "session_id": 0,
            "responses": [
                {
                    "topic": topic.topic,
                    "partitions": [
                        {
                            "partition_index": partition.partition,
                            "error_code": _DENIED,
                            "high_watermark": -1,
                            "last_stable_offset": -1,
                            "log_start_offset": -1,
                            "aborted_transactions": None,
                            "preferred_read_replica": -1,
                            "records": b"",
                        }
                        for partition in topic.partitions
                    ],
                }
                for topic in body.topics
            ],
        }
    elif key == LIST_OFFSETS and body.replica_id >= 0:
        answer = {
            "topics": [
                {
                    "name": topic.name,
                    "partitions": [
                        {
                            "partition_index": partition.partition_index,
                            "error_code": _DENIED,
                            "timestamp": -1,
                            "offset": -1,
                            "leader_epoch": -1,
                        }
                        for partition in topic.partitions
                    ],
                }
                for topic in body.topics
            ]
        }
    else:
        return None
    count_error(request, _DENIED)
    return answer


def _replica_id(fetch: Any) -> int:
    """Fetch names the follower in ``replica_id`` up to v14, in ``replica_state`` from v15."""
    replica_id = getattr(fetch, "replica_id", None)
    if replica_id is None:
        replica_id = fetch.replica_state.replica_id
    return int(replica_id)

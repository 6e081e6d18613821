"""Routes each decoded request to its API's handler, and counts and times it.

Each listener has its own dispatcher. The client listener refuses the requests only
brokers may send (:mod:`.broker_only`) and does not advertise those no client sends; the
internal listener serves every API, and where it authenticates it also advertises
SaslHandshake and SaslAuthenticate (which the connection's SASL session answers before
any request reaches a dispatcher).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from kio.index import load_request_schema

from .. import metrics
from ..protocol.codec import Request
from ..protocol.sasl import SASL_VERSIONS
from ..protocol.server import Answer, Deferred
from . import (
    api_versions,
    broker_heartbeat,
    broker_only,
    configs,
    coordinator,
    delete_records,
    describe_cluster,
    elect_leaders,
    fetch,
    group_offsets,
    groups,
    list_offsets,
    log_dirs,
    metadata,
    offset_for_leader_epoch,
    produce,
    producer_ids,
    raft_voters,
    reassignments,
    topics,
)
from .api_versions import SUPPORTED_VERSIONS
from .context import ApiContext
from .errors import api_name

Handler = Callable[[ApiContext, Request], Awaitable[Answer]]

HANDLERS: Mapping[int, Handler] = {
    api_versions.PRODUCE: produce.handle,
    api_versions.FETCH: fetch.handle,
    api_versions.LIST_OFFSETS: list_offsets.handle,
    api_versions.METADATA: metadata.handle,
    api_versions.OFFSET_COMMIT: group_offsets.offset_commit,
    api_versions.OFFSET_FETCH: group_offsets.offset_fetch,
    api_versions.FIND_COORDINATOR: coordinator.handle,
    api_versions.JOIN_GROUP: groups.join_group,
    api_versions.HEARTBEAT: groups.heartbeat,
    api_versions.LEAVE_GROUP: groups.leave_group,
    api_versions.SYNC_GROUP: groups.sync_group,
    api_versions.DESCRIBE_GROUPS: groups.describe_groups,
    api_versions.LIST_GROUPS: groups.list_groups,
    api_versions.CREATE_TOPICS: topics.create_topics,
    api_versions.DELETE_TOPICS: topics.delete_topics,
    api_versions.DELETE_RECORDS: delete_records.handle,
    api_versions.DELETE_GROUPS: groups.delete_groups,
    api_versions.OFFSET_DELETE: group_offsets.offset_delete,
    api_versions.INIT_PRODUCER_ID: producer_ids.handle,
    api_versions.OFFSET_FOR_LEADER_EPOCH: offset_for_leader_epoch.handle,
    api_versions.DESCRIBE_CONFIGS: configs.describe_configs,
    api_versions.DESCRIBE_LOG_DIRS: log_dirs.handle,
    api_versions.CREATE_PARTITIONS: topics.create_partitions,
    api_versions.ELECT_LEADERS: elect_leaders.handle,
    api_versions.INCREMENTAL_ALTER_CONFIGS: configs.incremental_alter_configs,
    api_versions.ALTER_PARTITION_REASSIGNMENTS: reassignments.alter,
    api_versions.LIST_PARTITION_REASSIGNMENTS: reassignments.list_reassignments,
    api_versions.DESCRIBE_CLUSTER: describe_cluster.handle,
    api_versions.BROKER_HEARTBEAT: broker_heartbeat.handle,
    api_versions.ADD_RAFT_VOTER: raft_voters.add_voter,
    api_versions.REMOVE_RAFT_VOTER: raft_voters.remove_voter,
}


async def _timed(
    body: Coroutine[Any, Any, Mapping[str, Any]], route: _Route, started: float
) -> Mapping[str, Any]:
    """A deferred answer counts in the request's latency until it is ready."""
    try:
        return await body
    finally:
        route.latency.observe(time.perf_counter() - started)


class _Route:
    """A handler with its metric children, looked up once rather than per request."""

    __slots__ = ("handler", "latency", "malformed", "requests")

    def __init__(self, api_key: int, handler: Handler) -> None:
        name = api_name(load_request_schema(api_key, SUPPORTED_VERSIONS[api_key][1]))
        self.handler = handler
        self.requests = metrics.REQUESTS.labels(api=name)
        self.latency = metrics.REQUEST_LATENCY.labels(api=name)
        self.malformed = metrics.MALFORMED_REQUESTS.labels(api=name)


_MALFORMED_UNKNOWN = metrics.MALFORMED_REQUESTS.labels(api="unknown")


class Dispatcher:
    """The broker side of :class:`~brook_broker.protocol.server.KafkaServer`."""

    def __init__(self, context: ApiContext, *, internal: bool = False, sasl: bool = False) -> None:
        """``internal``: the listener of the brokers' own requests; ``sasl``: its
        connections authenticate first."""
        self._context = context
        self._internal = internal
        self.supported_versions: Mapping[int, tuple[int, int]] = {
            **SUPPORTED_VERSIONS,
            **(SASL_VERSIONS if sasl else {}),
        }
        advertised = self.supported_versions if internal else broker_only.CLIENT_VERSIONS
        self._api_versions = api_versions.api_versions_body(advertised)
        handlers = {**HANDLERS, api_versions.API_VERSIONS: self._answer_api_versions}
        self._routes = {key: _Route(key, handler) for key, handler in handlers.items()}

    async def handle(self, request: Request) -> Answer:
        route = self._routes[request.api_key]
        route.requests.inc()
        if not self._internal:
            refused = broker_only.refusal(request)
            if refused is not None:
                return refused
        started = time.perf_counter()
        answer = None
        try:
            answer = await route.handler(self._context, request)
            if isinstance(answer, Deferred):
                answer = Deferred(_timed(answer.body, route, started))
            return answer
        finally:
            if not isinstance(answer, Deferred):
                route.latency.observe(time.perf_counter() - started)

    def api_versions_body(self) -> Mapping[str, Any]:
        return self._api_versions

    async def _answer_api_versions(
        self, context: ApiContext, request: Request
    ) -> Mapping[str, Any]:
        return self._api_versions

    def malformed_request(self, api_key: int | None) -> None:
        route = self._routes.get(api_key) if api_key is not None else None
        (route.malformed if route is not None else _MALFORMED_UNKNOWN).inc()

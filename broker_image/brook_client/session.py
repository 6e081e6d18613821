"""A session with the brokers of one cluster, as Kafka's admin tools hold one: from a
bootstrap list, one :class:`KafkaClient` per broker, and the ways to the broker a
request needs: any broker (which hands admin requests to the active controller), a
group's coordinator, or a partition's leader, each looked up again while it moves.

API versions are agreed once, with the first broker that answers ApiVersions (the
brokers of one cluster run the same code): each request goes out at the highest version
both sides speak. Brokers a Metadata response lists are remembered, so that requests
still find an answer when the bootstrap brokers are gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from brook_broker.protocol.client import KafkaClient, KafkaConnectionError, KafkaProtocolError
from kio.schema.errors import ErrorCode
from kio.schema.index import api_key_map

from .lag import TopicPartition

Address = tuple[str, int]
Broker = tuple[int, Address]
"""A broker's node id and address."""
Connect = Callable[[str, int, str], KafkaClient]
"""Makes the client of one broker from its host, port and the client id."""
Failure = tuple[str, int, str | None]
"""What failed (e.g. "topic 'orders'"), Kafka's error code, and the broker's message."""

RETRY_BACKOFF_S = 0.25
"""The pause before asking again while leaders, coordinators or controllers move."""


@dataclass(frozen=True)
class Api:
    """An API a client sends, with the versions whose requests it knows how to build."""

    key: int
    lowest: int
    highest: int

    @property
    def name(self) -> str:
        return "".join(word.title() for word in api_key_map[self.key].split("_"))


API_VERSIONS = Api(18, 0, 0)
METADATA = Api(3, 1, 12)
FIND_COORDINATOR = Api(10, 1, 4)

_BATCHED_FIND_COORDINATOR = 4

_CONTROLLER_MOVING = frozenset({ErrorCode.not_controller, ErrorCode.request_timed_out})
"""Answers while the active controller moves or its quorum has no leader yet."""

COORDINATOR_MOVING = frozenset(
    {
        ErrorCode.coordinator_load_in_progress,
        ErrorCode.coordinator_not_available,
        ErrorCode.not_coordinator,
    }
)
"""Answers that mean: ask FindCoordinator again, the group is (about to be) elsewhere."""


class KafkaRequestError(Exception):
    """A request could not be answered; the message says why."""


class BrokersUnreachable(KafkaRequestError):
    """No broker of the bootstrap list (nor any other known one) could be reached."""


class KafkaAdminError(KafkaRequestError):
    """A broker refused an admin request; ``code`` is Kafka's error code."""

    def __init__(self, operation: str, subject: str, code: int, message: str | None) -> None:
        self.operation = operation
        self.code = code
        self.message = message or ""
        detail = f": {message}" if message else ""
        super().__init__(f"{operation} of {subject}: {error_name(code)}{detail}")


class GroupsError(KafkaRequestError):
    """A question about groups could not be answered; the message says why."""


def error_name(code: int) -> str:
    """Kafka's name of an error code, e.g. NOT_COORDINATOR."""
    try:
        return ErrorCode(code).name.upper()
    except ValueError:
        return f"error code {code}"


def format_address(host: str, port: int) -> str:
    """``HOST:PORT``, with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_bootstrap(text: str) -> list[Address]:
    """``HOST:PORT[,HOST:PORT...]``, IPv6 hosts in brackets; ValueError says what is wrong."""
    addresses = []
    for item in text.split(","):
        item = item.strip()
        host, separator, port = item.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT in the bootstrap list, got {item!r}")
        addresses.append((host, int(port)))
    return addresses


def failure_reason(error: Exception, address: Address) -> str:
    """What went wrong with a request to ``address``; a timeout says nothing by itself."""
    if isinstance(error, KafkaConnectionError):
        return str(error)  # names the address already
    return f"no answer from {format_address(*address)} within the request timeout"


def metadata_brokers(metadata: Any) -> list[Broker]:
    """The brokers a Metadata response lists, by node id."""
    return sorted(
        (int(broker.node_id), (str(broker.host), int(broker.port))) for broker in metadata.brokers
    )


class ClusterClient:
    """Connections to the brokers of one cluster; keeps one per broker, and the brokers
    and API versions it learnt, until :meth:`close`. ``request_timeout`` bounds each
    request."""

    def __init__(
        self,
        bootstrap: str | Sequence[Address],
        *,
        client_id: str,
        request_timeout: float = 10.0,
        connect: Connect = KafkaClient,
    ) -> None:
        self._bootstrap = parse_bootstrap(bootstrap) if isinstance(bootstrap, str) else [*bootstrap]
        if not self._bootstrap:
            raise ValueError("the bootstrap list is empty")
        self._client_id = client_id
        self._request_timeout = request_timeout
        self._connect = connect
        self._clients: dict[Address, KafkaClient] = {}
        self._brokers: dict[int, Address] = {}
        self._versions: dict[int, tuple[int, int]] | None = None

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()

    async def metadata(self, topics: Sequence[str] | None) -> Any:
        """Metadata of ``topics`` (none if empty, all if None); remembers the live brokers
        it lists, to ask when the bootstrap brokers do not answer."""
        body = {
            "topics": None if topics is None else [{"name": topic} for topic in topics],
            "allow_auto_topic_creation": False,
            "include_cluster_authorized_operations": False,
            "include_topic_authorized_operations": False,
        }
        _, response = await self.any_broker(METADATA, body)
        self._brokers = dict(metadata_brokers(response))
        return response

    async def any_broker(self, api: Api, body: Mapping[str, Any]) -> tuple[int, Any]:
        """Version and response from the first broker that answers: the bootstrap
        brokers first, then the others learnt since."""
        failures = []
        known = [a for _, a in sorted(self._brokers.items()) if a not in self._bootstrap]
        for address in [*self._bootstrap, *known]:
            try:
                return await self.request(address, api, body)
            except (KafkaConnectionError, TimeoutError) as error:
                failures.append(failure_reason(error, address))
        raise BrokersUnreachable(f"no broker answered {api.name}: {'; '.join(failures)}")

    async def request(self, address: Address, api: Api, body: Mapping[str, Any]) -> tuple[int, Any]:
        """Version and response of one request to the broker at ``address``; raises
        KafkaConnectionError or TimeoutError when that broker does not answer."""
        version = await self.version(api)
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = self._connect(*address, self._client_id)
        try:
            response = await client.request(api.key, version, body, timeout=self._request_timeout)
        except KafkaProtocolError as error:
            raise KafkaRequestError(
                f"{format_address(*address)} answered {api.name} v{version}: {error}"
            ) from None
        return version, response

    async def version(self, api: Api) -> int:
        """The highest version of ``api`` both sides speak."""
        if api is API_VERSIONS:
            return 0
        if self._versions is None:
            _, response = await self.any_broker(API_VERSIONS, {})
            if response.error_code != ErrorCode.none:
                raise KafkaRequestError(f"ApiVersions: {error_name(response.error_code)}")
            self._versions = {
                int(key.api_key): (int(key.min_version), int(key.max_version))
                for key in response.api_keys
            }
        offered = self._versions.get(api.key)
        if offered is None:
            raise KafkaRequestError(f"the brokers do not implement {api.name} (API key {api.key})")
        version = min(offered[1], api.highest)
        if version < max(offered[0], api.lowest):
            raise KafkaRequestError(
                f"the brokers offer {api.name} versions {offered[0]}-{offered[1]}; "
                f"this tool speaks {api.lowest}-{api.highest}"
            )
        return version


class _CoordinatorMoved(Exception):
    """The coordinator asked is not (or not yet) the group's: find it again."""


class ClusterSession:
    """One :class:`ClusterClient` and what it learnt (brokers, API versions, group
    coordinators), kept until :meth:`close` (or the end of ``async with``); safe to
    reuse for many requests. ``request_timeout`` bounds each request; ``retry_timeout``
    how long to keep asking while controllers, coordinators or leaders move (after a
    broker failure a new one is elected within a few seconds)."""

    def __init__(
        self,
        bootstrap: str | Sequence[Address],
        *,
        client_id: str = "brook",
        request_timeout: float = 10.0,
        retry_timeout: float = 15.0,
        connect: Connect = KafkaClient,
    ) -> None:
        self._cluster = ClusterClient(
            bootstrap, client_id=client_id, request_timeout=request_timeout, connect=connect
        )
        self._retry_timeout = retry_timeout
        # The brokers' own deadline, inside the client's: their answer arrives first.
        self._timeout_ms = int(request_timeout * 800)
        self._coordinators: dict[str, Broker] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._cluster.close()

    def _deadline(self) -> float:
        """The event loop's time ``retry_timeout`` from now, to bound retries."""
        return asyncio.get_running_loop().time() + self._retry_timeout

    # -- the active controller, through any broker

    async def _ask(
        self,
        api: Api,
        body: Mapping[str, Any],
        failures_of: Callable[[Any], Iterable[Failure]],
    ) -> Any:
        """The response of a request to any broker, sent again while the controller
        moves; any other failure ``failures_of`` finds is raised as KafkaAdminError."""
        deadline = self._deadline()
        while True:
            _, response = await self._cluster.any_broker(api, body)
            failures = [failure for failure in failures_of(response) if failure[1] != 0]
            retrying = any(code in _CONTROLLER_MOVING for _, code, _ in failures)
            if not failures or not retrying or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(RETRY_BACKOFF_S)
        if failures:
            subject, code, message = failures[0]
            raise KafkaAdminError(api.name, subject, int(code), message)
        return response

    # -- a group's coordinator

    async def _coordinator(self, group_id: str) -> Broker:
        cached = self._coordinators.get(group_id)
        if cached is not None:
            return cached
        body = {"key": group_id, "key_type": 0, "coordinator_keys": [group_id]}
        version, response = await self._cluster.any_broker(FIND_COORDINATOR, body)
        answer = response.coordinators[0] if version >= _BATCHED_FIND_COORDINATOR else response
        code = int(answer.error_code)
        if code in COORDINATOR_MOVING:
            raise _CoordinatorMoved(f"FindCoordinator answered {error_name(code)}")
        if code != ErrorCode.none:
            message = f": {answer.error_message}" if answer.error_message else ""
            raise GroupsError(f"FindCoordinator of group {group_id!r}: {error_name(code)}{message}")
        coordinator = (int(answer.node_id), (str(answer.host), int(answer.port)))
        self._coordinators[group_id] = coordinator
        return coordinator

    async def _ask_coordinator(
        self,
        group_id: str,
        api: Api,
        body: Mapping[str, Any],
        error_of: Callable[[int, Any], int],
    ) -> tuple[int, int, Any]:
        """Node, version and response of a request to the group's coordinator, found
        again while coordinators move or load (bounded by ``retry_timeout``)."""
        deadline = self._deadline()
        while True:
            try:
                node, address = await self._coordinator(group_id)
                try:
                    version, response = await self._cluster.request(address, api, body)
                except (KafkaConnectionError, TimeoutError) as error:
                    reason = failure_reason(error, address)
                    raise _CoordinatorMoved(f"broker {node}: {reason}") from None
                code = error_of(version, response)
                if code not in COORDINATOR_MOVING:
                    return node, version, response
                raise _CoordinatorMoved(f"broker {node} answered {error_name(code)}")
            except _CoordinatorMoved as moved:
                self._coordinators.pop(group_id, None)
                if asyncio.get_running_loop().time() > deadline:
                    raise GroupsError(
                        f"no coordinator of group {group_id!r} answered {api.name} within "
                        f"{self._retry_timeout:g} s (last: {moved})"
                    ) from None
            await asyncio.sleep(RETRY_BACKOFF_S)

    # -- partition leaders

    async def _leaders(self, topics: Sequence[str]) -> dict[TopicPartition, Broker | None]:
        """Each partition's leader (None while it has none); deleted topics are absent."""
        response = await self._cluster.metadata(topics)
        brokers = dict(metadata_brokers(response))
        return {
            (str(topic.name), int(partition.partition_index)): (
                (int(partition.leader_id), brokers[partition.leader_id])
                if partition.leader_id in brokers
                else None
            )
            for topic in response.topics
            if topic.error_code != ErrorCode.unknown_topic_or_partition
            for partition in topic.partitions
        }

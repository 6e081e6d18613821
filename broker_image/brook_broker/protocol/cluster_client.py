"""Requests to the brokers of one cluster, as Kafka's admin tools send them: from a
bootstrap list, with one :class:`KafkaClient` per broker, to whichever broker answers.

API versions are agreed once, with the first broker that answers ApiVersions (the
brokers of one cluster run the same code): each request goes out at the highest version
both sides speak. Brokers a Metadata response lists are remembered, so that requests
still find an answer when the bootstrap brokers are gone. ``brook groups`` and the
operator's admin client are both built on this.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from kio.schema.errors import ErrorCode
from kio.schema.index import api_key_map

from .client import KafkaClient, KafkaConnectionError, KafkaProtocolError

Address = tuple[str, int]
Broker = tuple[int, Address]
"""A broker's node id and address."""

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


class KafkaRequestError(Exception):
    """A request could not be answered; the message says why."""


class BrokersUnreachable(KafkaRequestError):
    """No broker of the bootstrap list (nor any other known one) could be reached."""


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


def deadline_in(seconds: float) -> float:
    """The event loop's time ``seconds`` from now, to bound retries."""
    return asyncio.get_running_loop().time() + seconds


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
        connect: Callable[[str, int, str], KafkaClient] = KafkaClient,
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


class ClusterSession:
    """What the clients that ask one cluster many things (``brook groups``, the
    operator's admin client) share: one :class:`ClusterClient`, kept until :meth:`close`
    (or the end of ``async with``), and how long to keep retrying while leaders or
    coordinators move."""

    def __init__(
        self,
        bootstrap: str | Sequence[Address],
        *,
        client_id: str,
        request_timeout: float = 10.0,
        retry_timeout: float = 15.0,
        connect: Callable[[str, int, str], KafkaClient] = KafkaClient,
    ) -> None:
        self._cluster = ClusterClient(
            bootstrap, client_id=client_id, request_timeout=request_timeout, connect=connect
        )
        self._retry_timeout = retry_timeout

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._cluster.close()

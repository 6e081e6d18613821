"""Side HTTP handlers, called through the router with mocked requests (no sockets)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from brook_broker.http import HttpServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter


async def get(server: HttpServer, path: str) -> web.Response:
    request = make_mocked_request("GET", path, app=server.application)
    match = await server.application.router.resolve(request)
    response = await match.handler(request)
    assert isinstance(response, web.Response)
    return response


async def test_healthz_answers_while_not_ready() -> None:
    response = await get(HttpServer(lambda: False, CollectorRegistry()), "/healthz")
    assert response.status == 200
    assert response.text == "ok"


async def test_readyz_follows_is_ready() -> None:
    ready = False
    server = HttpServer(lambda: ready, CollectorRegistry())
    assert (await get(server, "/readyz")).status == 503
    ready = True
    assert (await get(server, "/readyz")).status == 200


async def test_metrics_exposes_the_registry_in_prometheus_format() -> None:
    registry = CollectorRegistry()
    Counter("brook_test_requests", "requests", ["api"], registry=registry).labels("Produce").inc(3)
    response = await get(HttpServer(lambda: True, registry), "/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert response.body is not None
    assert b'brook_test_requests_total{api="Produce"} 3.0' in bytes(response.body)


async def test_unknown_path_is_not_routed() -> None:
    server = HttpServer(lambda: True, CollectorRegistry())
    request = make_mocked_request("GET", "/nope", app=server.application)
    match = await server.application.router.resolve(request)
    assert match.http_exception is not None
    assert match.http_exception.status == 404

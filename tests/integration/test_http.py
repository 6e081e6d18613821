"""The side HTTP server on a real loopback socket: bound port, answers, clean stop."""

from __future__ import annotations

import aiohttp
import pytest
from brook_broker.http import HttpServer
from prometheus_client import CollectorRegistry


async def test_serves_on_a_free_port_and_stops() -> None:
    server = HttpServer(lambda: True, CollectorRegistry())
    host, port = await server.start("127.0.0.1", 0)
    assert host == "127.0.0.1" and port > 0
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for path, status in (("/healthz", 200), ("/readyz", 200), ("/metrics", 200)):
                async with session.get(f"http://{host}:{port}{path}") as response:
                    assert response.status == status, path
    finally:
        await server.stop()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://{host}:{port}/healthz")


async def test_address_in_use_is_an_error_and_leaves_nothing_running() -> None:
    first = HttpServer(lambda: True, CollectorRegistry())
    host, port = await first.start("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            await HttpServer(lambda: True, CollectorRegistry()).start(host, port)
    finally:
        await first.stop()

"""Side HTTP server: liveness, readiness and Prometheus metrics.

Kept apart from the Kafka listener so that probes and scrapes keep answering while the
Kafka port is busy, and so that Kubernetes can tell "alive" (``/healthz``) from "ready
to take clients" (``/readyz``, e.g. logs recovered and listener bound).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from . import metrics

log = logging.getLogger(__name__)


class HttpServer:
    def __init__(
        self, is_ready: Callable[[], bool], registry: CollectorRegistry = metrics.REGISTRY
    ) -> None:
        self._is_ready = is_ready
        self._registry = registry
        self.application = web.Application()
        self.application.router.add_get("/healthz", self._healthz)
        self.application.router.add_get("/readyz", self._readyz)
        self.application.router.add_get("/metrics", self._metrics)
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (port 0 picks a free one); returns the bound address."""
        # No access log: a scrape every few seconds would drown the broker's own lines.
        # A bounded shutdown: a scrape in flight must not hold up the broker's exit.
        runner = web.AppRunner(self.application, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0]
        log.info("http listening", extra={"address": f"{bound[0]}:{bound[1]}"})
        return bound[0], bound[1]

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._is_ready():
            return web.Response(text="ready")
        return web.Response(status=503, text="not ready")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

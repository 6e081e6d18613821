"""The whole harness in one background thread: API server, pod runner, service network.

Tests talk to it synchronously (``Kube`` methods, or any client with ``kubeconfig``);
everything of the harness runs in its own event loop, so sync and async tests alike can
use it and a test's own loop never blocks the server the operator depends on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import kmock

from tests.support.tls import ServerCertificate, issue

from .apiserver import ApiServer, write_kubeconfig
from .dns import HOSTS, ServiceNetwork, splice
from .pods import ApiEndpoint, PodRunner, pod_ready
from .runtimes import ContainerRuntime
from .store import MERGE_PATCH, ApiError, Object, ResourceType

T = TypeVar("T")

START_TIMEOUT_S = 10.0
API_HOST = "127.0.0.1"
STOP_TIMEOUT_S = 40.0


class Kube:
    """A running emulated cluster. Resources are named ``"apps/v1/statefulsets"``,
    ``"v1/pods"``, ``"brook.dev/v1alpha1/brokers"``."""

    def __init__(
        self,
        root: Path,
        crds: Iterable[Path] = (),
        hosts: Path = HOSTS,
        runtime: ContainerRuntime | None = None,
    ) -> None:
        """``runtime``: how pods' containers run (default: local processes, see
        :mod:`.runtimes`)."""
        self.root = root
        self._crds = list(crds)
        self._hosts = hosts
        self._runtime = runtime
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kube", daemon=True)
        self._started = False
        self.api: ApiServer
        self.runner: PodRunner
        self.network: ServiceNetwork
        self.url = ""
        self.kubeconfig = root / "kubeconfig"
        self._tasks: list[asyncio.Task[None]] = []
        self._exit: Callable[[], Any] | None = None

    # --- lifecycle ---

    def start(self) -> Kube:
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        self._started = True
        self._run(self._start(), START_TIMEOUT_S)
        write_kubeconfig(self.kubeconfig, self.url)
        return self

    async def _start(self) -> None:
        self.api = ApiServer()
        server = kmock.Server(self.api)
        await self.api.__aenter__()
        await server.__aenter__()
        self.url = str(server.url).rstrip("/")

        certificate = issue(self.root / "apiserver-tls", [API_HOST])
        tls = await self._serve_tls(server.port, certificate)

        async def exit_server() -> None:
            tls.close()
            await server.__aexit__(None, None, None)
            await self.api.__aexit__(None, None, None)

        self._exit = exit_server
        store = self.api.store
        namespaces = store.resource("", "v1", "namespaces")
        for name in ("default", "kube-system"):
            store.create(namespaces, None, {"metadata": {"name": name}})
        self.api.load_crds(self._crds)
        self.network = ServiceNetwork(store, self._hosts)
        host, port = tls.sockets[0].getsockname()[:2]
        endpoint = ApiEndpoint(host, port, certificate.ca, self.api.authorizer)
        self.runner = PodRunner(
            store, self.root, endpoint, self.network.refresh_hosts, self._runtime
        )
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.runner.run()), loop.create_task(self.network.run())]

    @staticmethod
    async def _serve_tls(plain_port: int, certificate: ServerCertificate) -> asyncio.Server:
        """The API server over TLS, for pods (a pod trusts the CA it is given)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificate.certificate, certificate.key)

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    API_HOST, plain_port
                )
            except OSError:
                writer.close()
                return
            await splice(reader, writer, upstream_reader, upstream_writer)

        return await asyncio.start_server(relay, API_HOST, 0, ssl=context)

    def stop(self) -> None:
        """Stop every pod process, the proxies, the server; remove the hosts block."""
        if not self._started:
            return
        try:
            self._run(self._stop(), STOP_TIMEOUT_S)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._started = False

    async def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.runner.stop()
        await self.network.stop()
        if self._exit is not None:
            await self._exit()

    def _run(self, coroutine: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(*args)`` in the harness's loop (the store is not thread-safe)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(function(*args))
            except BaseException as error:
                future.set_exception(error)

        self._loop.call_soon_threadsafe(run)
        return future.result(10)

    # --- objects ---

    def resource(self, name: str) -> ResourceType:
        """``"apps/v1/statefulsets"`` or ``"v1/pods"`` → its ResourceType."""
        parts = name.split("/")
        group, version, plural = ("", *parts) if len(parts) == 2 else parts
        return self.call(self.api.store.resource, group, version, plural)

    def _kind_of(self, obj: Object) -> ResourceType:
        return self.call(self.api.store.kind, obj["apiVersion"], obj["kind"])

    def get(self, resource: str, name: str, namespace: str | None = "default") -> Object:
        return self.call(self.api.store.get, self.resource(resource), namespace, name)

    def find(self, resource: str, name: str, namespace: str | None = "default") -> Object | None:
        return self.call(self.api.store.find, self.resource(resource), namespace, name)

    def list(
        self, resource: str, namespace: str | None = "default", labels: str | None = None
    ) -> list[Object]:
        return self.call(self.api.store.list, self.resource(resource), namespace, labels)

    def create(self, obj: Object, namespace: str = "default") -> Object:
        return self.call(self.api.store.create, self._kind_of(obj), namespace, obj)

    def apply(self, obj: Object, namespace: str = "default") -> Object:
        """Create, or merge-patch the object's fields into the existing one (``kubectl apply``
        without its field ownership)."""
        resource = self._kind_of(obj)
        name = obj["metadata"]["name"]
        try:
            return self.call(self.api.store.create, resource, namespace, obj)
        except ApiError as error:
            if error.code != 409:
                raise
        return self.call(self.api.store.patch, resource, namespace, name, MERGE_PATCH, obj)

    def patch(
        self,
        resource: str,
        name: str,
        patch: Object,
        namespace: str | None = "default",
        subresource: str | None = None,
    ) -> Object:
        return self.call(
            self.api.store.patch,
            self.resource(resource),
            namespace,
            name,
            MERGE_PATCH,
            patch,
            subresource,
        )

    def delete(self, resource: str, name: str, namespace: str | None = "default") -> Object:
        return self.call(self.api.store.delete, self.resource(resource), namespace, name)

    # --- waiting ---

    def wait_for(
        self, condition: Callable[[], T], timeout: float = 60.0, what: str = "the condition"
    ) -> T:
        """Poll ``condition`` until it returns something true; fails with the pods' state."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = condition()
            except (ApiError, KeyError, TypeError, IndexError) as error:
                last = error
            else:
                if last:
                    return last
            time.sleep(0.25)
        raise AssertionError(
            f"{what} did not happen within {timeout:.0f} s (last: {last!r})\n{self.describe()}"
        )

    def wait_ready_pods(
        self, labels: str, count: int, namespace: str = "default", timeout: float = 60.0
    ) -> list[Object]:
        def ready() -> list[Object]:
            pods = [p for p in self.list("v1/pods", namespace, labels) if pod_ready(p)]
            return pods if len(pods) == count else []

        return self.wait_for(ready, timeout, f"{count} ready pods with {labels}")

    # --- debugging ---

    def pod_log(self, name: str, namespace: str = "default", lines: int = 40) -> str:
        path = self.runner.log_path(namespace, name)
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def describe(self) -> str:
        """Every pod's phase, readiness and restarts, and its log's tail."""
        lines = []
        for pod in self.list("v1/pods", None):
            meta, status = pod["metadata"], pod.get("status") or {}
            restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or [])
            lines.append(
                f"pod {meta['namespace']}/{meta['name']}: {status.get('phase')} "
                f"ip={status.get('podIP')} ready={pod_ready(pod)} restarts={restarts}\n"
                + self.pod_log(meta["name"], meta["namespace"], 15)
            )
        return "\n".join(lines) or "(no pods)"

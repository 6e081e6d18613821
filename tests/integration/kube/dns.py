"""Service names and addresses on this machine, for brokers and test clients alike.

Names: a block of ``/etc/hosts`` between marker comments, rewritten as Services and pods
come and go and removed at teardown (a block left by a run that died is dropped the next
time, its pid being gone). Every process resolves through it, with no resolver to start:

- ``SERVICE.NS.svc.cluster.local`` → the Service's cluster IP (127.N+1.X.Y);
- for a headless Service, ``POD.SERVICE.NS.svc.cluster.local`` → the pod's IP for each pod
  whose ``subdomain`` is the Service, and the Service name → its pods' IPs (ready pods, or
  all of them with ``publishNotReadyAddresses``).

Cluster IPs: a TCP proxy listens on CLUSTER_IP:PORT of each port of a non-headless
Service and splices every connection to a ready pod selected by the Service (round robin),
at the ``targetPort`` (a number or a container port's name), as kube-proxy would.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import re
from collections.abc import Iterable
from pathlib import Path

from .pods import pod_ready
from .runtimes import process_alive
from .store import Object, Store, WatchEvent, match_labels_selector

HOSTS = Path("/etc/hosts")
DOMAIN = "svc.cluster.local"
_BLOCK = re.compile(
    r"^# BEGIN kube-harness pid=(?P<pid>\d+)\n.*?^# END kube-harness pid=(?P=pid)\n",
    re.M | re.S,
)


def write_hosts_block(lines: Iterable[str] | None, path: Path = HOSTS) -> None:
    """Replace this process's block (None: remove it) and drop blocks of dead processes.

    Written in place under a lock: ``/etc/hosts`` may be a bind mount that cannot be
    replaced by a rename."""
    pid = os.getpid()
    with path.open("r+") as hosts:
        fcntl.flock(hosts, fcntl.LOCK_EX)
        text = hosts.read()
        kept = _BLOCK.sub(
            lambda m: m.group(0) if int(m["pid"]) != pid and process_alive(int(m["pid"])) else "",
            text,
        )
        if not kept.endswith("\n") and kept:
            kept += "\n"
        if lines is not None:
            body = "".join(f"{line}\n" for line in lines)
            kept += f"# BEGIN kube-harness pid={pid}\n{body}# END kube-harness pid={pid}\n"
        if kept != text:
            hosts.seek(0)
            hosts.write(kept)
            hosts.truncate()


def host_lines(services: Iterable[Object], pods: Iterable[Object]) -> list[str]:
    """``IP NAME`` lines for the Services and the pods (see the module docstring)."""
    pods = list(pods)
    lines = []
    for service in services:
        meta, spec = service["metadata"], service.get("spec") or {}
        namespace, name = meta["namespace"], meta["name"]
        fqdn = f"{name}.{namespace}.{DOMAIN}"
        if spec.get("clusterIP") and spec["clusterIP"] != "None":
            lines.append(f"{spec['clusterIP']} {fqdn} {name}.{namespace}.svc")
            continue
        selects = match_labels_selector({"matchLabels": spec.get("selector") or {}})
        not_ready_too = bool(spec.get("publishNotReadyAddresses"))
        for pod in pods:
            pod_meta, pod_spec = pod["metadata"], pod.get("spec") or {}
            ip = (pod.get("status") or {}).get("podIP")
            if pod_meta["namespace"] != namespace or not ip or not spec.get("selector"):
                continue
            if not selects(pod_meta.get("labels") or {}):
                continue
            if not (not_ready_too or pod_ready(pod)):
                continue
            lines.append(f"{ip} {fqdn}")
            if pod_spec.get("subdomain") == name and pod_spec.get("hostname"):
                lines.append(f"{ip} {pod_spec['hostname']}.{fqdn}")
    return lines


class ServiceNetwork:
    """Keeps the hosts block and the cluster-IP proxies in step with the store."""

    def __init__(self, store: Store, hosts: Path = HOSTS) -> None:
        self.store = store
        self.hosts = hosts
        self._services = store.resource("", "v1", "services")
        self._pods = store.resource("", "v1", "pods")
        self._lines: list[str] | None = None
        self._proxies: dict[tuple[str, int], tuple[str, str, asyncio.Server]] = {}
        self._turns = itertools.count()
        self._wake = asyncio.Event()
        store.listeners.append(self._on_event)

    def _on_event(self, event: WatchEvent) -> None:
        if event.resource.plural in ("services", "pods"):
            self._wake.set()

    async def run(self) -> None:
        while True:
            await self.reconcile()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()

    def refresh_hosts(self) -> list[Object]:
        """Rewrite the hosts block if names changed; returns the Services."""
        services = self.store.list(self._services)
        lines = host_lines(services, self.store.list(self._pods))
        if lines != self._lines:
            write_hosts_block(lines, self.hosts)
            self._lines = lines
        return services

    async def reconcile(self) -> None:
        services = self.refresh_hosts()
        wanted: dict[tuple[str, int], tuple[str, str]] = {}
        for service in services:
            ip = (service.get("spec") or {}).get("clusterIP")
            if not ip or ip == "None":
                continue
            for port in service["spec"].get("ports") or []:
                meta = service["metadata"]
                wanted[(ip, int(port["port"]))] = (meta["namespace"], meta["name"])
        for address, (namespace, name, server) in list(self._proxies.items()):
            if wanted.get(address) != (namespace, name):
                server.close()
                del self._proxies[address]
        for address, (namespace, name) in wanted.items():
            if address not in self._proxies:
                server = await asyncio.start_server(
                    lambda r, w, a=address: self._splice(a, r, w), *address, reuse_address=True
                )
                self._proxies[address] = (namespace, name, server)

    async def stop(self) -> None:
        self.store.listeners.remove(self._on_event)
        for _, _, server in self._proxies.values():
            server.close()
        self._proxies.clear()
        write_hosts_block(None, self.hosts)

    def endpoints(self, address: tuple[str, int]) -> list[tuple[str, int]]:
        """Ready pods behind a Service port, as (pod IP, target port)."""
        if address not in self._proxies:
            return []
        namespace, name, _ = self._proxies[address]
        service = self.store.find(self._services, namespace, name)
        if service is None or not service["spec"].get("selector"):
            return []
        port = next(p for p in service["spec"]["ports"] if int(p["port"]) == address[1])
        selects = match_labels_selector({"matchLabels": service["spec"]["selector"]})
        found = []
        for pod in self.store.list(self._pods, namespace):
            ip = (pod.get("status") or {}).get("podIP")
            if ip and pod_ready(pod) and selects(pod["metadata"].get("labels") or {}):
                target = _target_port(pod, port.get("targetPort", port["port"]))
                if target is not None:
                    found.append((ip, target))
        return found

    async def _splice(
        self, address: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        endpoints = self.endpoints(address)
        try:
            if not endpoints:
                return
            host, port = endpoints[next(self._turns) % len(endpoints)]
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
            except OSError:
                return
            await splice(reader, writer, upstream_reader, upstream_writer)
        finally:
            writer.close()


def _target_port(pod: Object, target: int | str) -> int | None:
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    for container in pod["spec"].get("containers") or []:
        for declared in container.get("ports") or []:
            if declared.get("name") == target:
                return int(declared["containerPort"])
    return None


async def splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
) -> None:
    """Relay both ways until both sides are done, then close both."""
    try:
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
    finally:
        upstream_writer.close()
        writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):
        writer.close()

"""The Kubernetes API over real HTTP: kmock's scaffold (server, discovery, errors, reactions)
with the stateful behaviour of :mod:`.store` answering every object request.

kmock 0.8's own emulator keeps no server-set metadata, ignores resourceVersion on watches,
answers POST with 200 and a failed json-patch test with 500 (see the module docstring of
the package); this subclass keeps kmock's HTTP handling and bundled discovery and routes
object requests to the store. Reactions a test adds (``server['get /api/v1/pods'] << 500``)
still take precedence over the store, as kmock's fallbacks do.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import warnings
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml

from .rbac import Access, Authorizer, verb
from .store import (
    CRD_GROUP,
    JSON_PATCH,
    MERGE_PATCH,
    ApiError,
    Object,
    ResourceType,
    Store,
    WatchEvent,
    json_patch,
    merge_patch,
)

_NAMESPACES_PATH = re.compile(r"/api/v1/namespaces/?")
"""Paths kmock's own parser cannot read (the namespaces resource itself)."""

_ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class Route:
    group: str
    version: str
    namespace: str | None
    plural: str
    name: str | None
    subresource: str | None


def parse_route(path: str) -> Route | None:
    """``/api/v1/namespaces/NS/pods/NAME/status`` and the like; None for other paths."""
    parts = [part for part in path.split("/") if part]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    return Route(
        group,
        version,
        namespace,
        rest[0],
        rest[1] if len(rest) > 1 else None,
        rest[2] if len(rest) > 2 else None,
    )


def _truthy(text: str | None) -> bool:
    return (text or "").lower() in ("true", "1")


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesScaffold):
    """Serve with ``async with ApiServer() as api, kmock.Server(api) as server``."""

    store: Store = attrs.field(factory=Store)
    bookmark_interval: float = 5.0
    authorizer: Authorizer = attrs.field(init=False)
    """Pods' service account tokens and what RBAC grants them."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.authorizer = Authorizer(self.store)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()
        for resource in list(self.resources):
            info = self.resources[resource]
            if resource.plural and "/" not in resource.plural and info.kind:
                self.store.register(
                    ResourceType(
                        group=resource.group or "",
                        version=resource.version or "",
                        plural=resource.plural,
                        kind=info.kind,
                        namespaced=bool(info.namespaced),
                        subresources=frozenset(info.subresources),
                    )
                )
        self.store.type_listeners.append(self._publish_types)
        self.fallback[lambda request: parse_route(request.url.path) is not None] << self._serve

    # --- discovery ---

    def _publish_types(self) -> None:
        """Discovery follows the store's resource types (CRDs come and go)."""
        served = {
            kmock.resource(t.group, t.version, t.plural): t for t in self.store.types.values()
        }
        for resource in list(self.resources):
            if resource not in served:
                del self.resources[resource]
        for resource, kind in served.items():
            if resource not in self.resources or self.resources[resource].kind != kind.kind:
                self.resources[resource] = kmock.ResourceInfo(
                    namespaced=kind.namespaced,
                    kind=kind.kind,
                    singular=kind.kind.lower(),
                    verbs=set(_ALL_VERBS),
                    subresources=set(kind.subresources),
                )

    async def _serve_version(self, request: kmock.Request) -> Any:
        # kmock names the core group version "/v1"; clients expect "v1".
        answer = await super()._serve_version(request)
        answer["groupVersion"] = answer["groupVersion"].lstrip("/")
        return answer

    # --- HTTP entry ---

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if len(raw_request.path) > 1 and raw_request.path.endswith("/"):
            # The kubernetes client asks for "/api/v1/"; kmock's discovery knows "/api/v1".
            path = raw_request.path.rstrip("/")
            raw_request = raw_request.clone(rel_url=raw_request.rel_url.with_path(path))
        if not _NAMESPACES_PATH.fullmatch(raw_request.path):
            return await super().__call__(raw_request)
        body = await raw_request.read()
        request = kmock.Request(
            id=len(self._requests),
            method=raw_request.method,
            url=raw_request.url,
            params=dict(raw_request.query),
            headers=dict(raw_request.headers),
            body=body,
            text=body.decode(errors="replace"),
            data=json.loads(body) if body else None,
            raw_request=raw_request,
        )
        self._requests.append(request)  # kmock's views select among the recorded requests
        try:
            return await self._handle(request)
        except Exception as error:
            return await self._render_error(error)

    async def _serve(self, request: kmock.Request) -> kmock.Response:
        try:
            return self._dispatch(request)
        except ApiError as error:
            raise kmock.KubernetesError(
                status=error.code,
                reason=error.reason,
                message=error.message,
                details={"causes": [{"message": error.message}]},
            ) from None

    def _dispatch(self, request: kmock.Request) -> kmock.Response:
        # The Response is always built here with its status: kmock keeps the status of the
        # last Response returned through one reaction for the next requests.
        route = parse_route(request.url.path)
        assert route is not None
        store = self.store
        resource = store.resource(route.group, route.version, route.plural)
        namespace, name, sub = route.namespace, route.name, route.subresource
        method = str(request.method.value).upper()
        params = request.params
        self.authorizer.check(
            request.headers.get("Authorization"),
            Access(
                verb(method, name is not None, _truthy(params.get("watch"))),
                route.group,
                f"{route.plural}/{sub}" if sub else route.plural,
                namespace,
                name,
            ),
        )
        if method == "GET" and _truthy(params.get("watch")):
            if name is not None:
                params = {**params, "fieldSelector": f"metadata.name={name}"}
            return self._respond(200, self._watch(resource, namespace, params))
        if method == "GET" and name is None:
            items = store.list(
                resource, namespace, params.get("labelSelector"), params.get("fieldSelector")
            )
            return self._respond(
                200,
                {
                    "apiVersion": resource.api_version,
                    "kind": f"{resource.kind}List",
                    "metadata": {"resourceVersion": str(store.revision)},
                    "items": items,
                },
            )
        if method == "POST" and name is None:
            return self._respond(201, store.create(resource, namespace, request.data or {}))
        if name is None:
            if method != "DELETE":
                raise ApiError(405, "MethodNotAllowed", f"{method} needs an object name")
            deleted = [
                store.delete(resource, obj["metadata"].get("namespace"), obj["metadata"]["name"])
                for obj in store.list(resource, namespace, params.get("labelSelector"))
            ]
            return self._respond(200, {"kind": f"{resource.kind}List", "items": deleted})
        if sub == "scale":
            return self._respond(200, self._scale(resource, namespace, name, method, request))
        if method == "GET":
            return self._respond(200, store.get(resource, namespace, name))
        if method == "PUT":
            return self._respond(200, store.replace(resource, namespace, name, request.data, sub))
        if method == "PATCH":
            patch_type = request.headers.get("Content-Type", MERGE_PATCH).split(";")[0].strip()
            return self._respond(
                200, store.patch(resource, namespace, name, patch_type, request.data, sub)
            )
        if method == "DELETE":
            options = request.data if isinstance(request.data, dict) else {}
            propagation = options.get("propagationPolicy") or params.get(
                "propagationPolicy", "Background"
            )
            return self._respond(200, store.delete(resource, namespace, name, propagation))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not served on {request.url.path}")

    @staticmethod
    def _respond(status: int, payload: Any) -> kmock.Response:
        headers = {"Content-Type": "application/json"}
        return kmock.Response(status=status, payload=payload, headers=headers)

    # --- /scale ---

    def _scale(
        self,
        resource: ResourceType,
        namespace: str | None,
        name: str,
        method: str,
        request: kmock.Request,
    ) -> Object:
        if "scale" not in resource.subresources:
            raise ApiError(404, "NotFound", f"{resource.plural} have no scale subresource")
        obj = self.store.get(resource, namespace, name)
        scale = scale_of(obj)
        if method == "GET":
            return scale
        if method == "PUT":
            wanted = request.data
        elif method == "PATCH":
            patch_type = request.headers.get("Content-Type", MERGE_PATCH).split(";")[0].strip()
            if patch_type == JSON_PATCH:
                wanted = json_patch(scale, request.data)
            else:
                wanted = merge_patch(scale, request.data)
        else:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not served on scale")
        replicas = int((wanted.get("spec") or {}).get("replicas", 0))
        updated = self.store.patch(
            resource, namespace, name, MERGE_PATCH, {"spec": {"replicas": replicas}}
        )
        return scale_of(updated)

    # --- watch ---

    async def _watch(
        self, resource: ResourceType, namespace: str | None, params: dict[str, str]
    ) -> AsyncIterator[Any]:
        yield b""  # sends the headers: a watch with nothing to say is still open
        store = self.store
        matches = store.matcher(params.get("labelSelector"), params.get("fieldSelector"))
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        deadline = time.monotonic() + timeout if timeout else None
        bookmarks = _truthy(params.get("allowWatchBookmarks"))
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        since = params.get("resourceVersion") or "0"
        if since == "0":
            backlog: Iterable[WatchEvent] = [
                WatchEvent(store.revision, "ADDED", resource, obj)
                for obj in store.list(resource, namespace)
            ]
        else:
            try:
                backlog = store.events_since(int(since))
            except ApiError as error:
                yield {"type": "ERROR", "object": status_of(error)}
                return
        # No await between taking the backlog and listening: no event falls in between.
        store.listeners.append(queue.put_nowait)
        try:
            for event in backlog:
                shown = self._shown(event, resource, namespace, matches)
                if shown is not None:
                    yield shown
            while True:
                wait = self.bookmark_interval if bookmarks else None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    wait = left if wait is None else min(wait, left)
                try:
                    event = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if bookmarks and queue.empty():
                        yield {
                            "type": "BOOKMARK",
                            "object": {
                                "apiVersion": resource.api_version,
                                "kind": resource.kind,
                                "metadata": {"resourceVersion": str(store.revision)},
                            },
                        }
                    continue
                shown = self._shown(event, resource, namespace, matches)
                if shown is not None:
                    yield shown
        finally:
            store.listeners.remove(queue.put_nowait)

    @staticmethod
    def _shown(
        event: WatchEvent, resource: ResourceType, namespace: str | None, matches: Any
    ) -> Object | None:
        """The event as this watcher sees it: an object leaving its selector is DELETED."""
        if event.resource.key != resource.key:
            return None
        if namespace is not None and event.object["metadata"].get("namespace") != namespace:
            return None
        now_matches = matches(event.object)
        before = matches(event.old) if event.old is not None else now_matches
        if now_matches and before:
            kind = event.type
        elif now_matches:
            kind = "ADDED"
        elif before and event.type == "MODIFIED":
            kind = "DELETED"
        else:
            return None
        return {"type": kind, "object": event.object}

    # --- set-up helpers ---

    def load_crds(self, paths: Iterable[Path]) -> list[str]:
        """Create the CRDs of these YAML files (as ``kubectl apply -f crds/`` would)."""
        crds = self.store.resource(CRD_GROUP, "v1", "customresourcedefinitions")
        names = []
        for path in paths:
            for document in yaml.safe_load_all(path.read_text()):
                if document:
                    names.append(self.store.create(crds, None, document)["metadata"]["name"])
        return names


def scale_of(obj: Object) -> Object:
    meta = obj["metadata"]
    selector = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            key: meta[key]
            for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if key in meta
        },
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 1)},
        "status": {
            "replicas": (obj.get("status") or {}).get("replicas", 0),
            "selector": ",".join(f"{key}={value}" for key, value in selector.items()),
        },
    }


def status_of(error: ApiError) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "code": error.code,
        "reason": error.reason,
        "message": error.message,
    }


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    """A kubeconfig for the operator process and the ``kubernetes`` client (no auth)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "harness", "cluster": {"server": url}}],
        "users": [{"name": "harness", "user": {"token": "harness"}}],
        "contexts": [
            {
                "name": "harness",
                "context": {"cluster": "harness", "user": "harness", "namespace": namespace},
            }
        ],
        "current-context": "harness",
    }
    path.write_text(yaml.safe_dump(config))
    return path

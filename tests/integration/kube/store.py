"""The state of the emulated API server: objects, resource versions, watch history.

Pure and synchronous (no HTTP, no event loop), so its rules are unit-tested on their own:
server-set metadata, status and spec kept apart by the status subresource, generation
bumped by spec changes only, json-patch / merge-patch / strategic merge (lists replaced),
label and field selectors, finalizers, owner-reference garbage collection, CRD
registration with schema defaults and validation, and cluster IPs for Services.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import os
import random
import re
import string
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema

Object = dict[str, Any]

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"

CRD_GROUP = "apiextensions.k8s.io"


class ApiError(Exception):
    """A refused request, answered as a Kubernetes ``Status`` with this code and reason."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


def not_found(resource: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource.plural}.{resource.group} "{name}" not found')


def invalid(resource: ResourceType, name: str, detail: str) -> ApiError:
    return ApiError(
        422, "Invalid", f'{resource.kind}.{resource.group} "{name}" is invalid: {detail}'
    )


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: frozenset[str] = frozenset()
    schema: Mapping[str, Any] | None = None
    """The CRD's openAPIV3Schema (custom resources only)."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        return self.group, self.plural


@dataclass(frozen=True)
class WatchEvent:
    revision: int
    type: str
    """ADDED, MODIFIED or DELETED."""
    resource: ResourceType
    object: Object
    old: Object | None = None
    """The previous state (MODIFIED): a selector watch turns a match lost into DELETED."""


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- selectors ---------------------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"^\s*(?P<key>[^\s!=,()]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s,()]*)"
    r"|\s+(?P<set_op>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)


def _split_requirements(text: str) -> list[str]:
    """Commas separate requirements, except inside the parentheses of ``in (a, b)``."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part for part in parts if part.strip()]


def label_selector_matcher(text: str | None) -> Callable[[Mapping[str, str]], bool]:
    """Kubernetes label selector syntax: ``a=b``, ``a!=b``, ``a in (x,y)``, ``a``, ``!a``."""
    if not text:
        return lambda labels: True
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for requirement in _split_requirements(text):
        stripped = requirement.strip()
        if stripped.startswith("!"):
            key = stripped[1:].strip()
            checks.append(lambda labels, key=key: key not in labels)
            continue
        match = _REQUIREMENT.match(stripped)
        if match is None:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {stripped!r}")
        key = match["key"]
        if match["op"] in ("=", "=="):
            checks.append(lambda labels, k=key, v=match["value"]: labels.get(k) == v)
        elif match["op"] == "!=":
            checks.append(lambda labels, k=key, v=match["value"]: labels.get(k) != v)
        elif match["set_op"]:
            values = {value.strip() for value in match["values"].split(",") if value.strip()}
            if match["set_op"] == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        else:
            checks.append(lambda labels, k=key: k in labels)
    return lambda labels: all(check(labels) for check in checks)


def match_labels_selector(
    selector: Mapping[str, Any] | None,
) -> Callable[[Mapping[str, str]], bool]:
    """A ``LabelSelector`` object (matchLabels, matchExpressions) as a predicate."""
    selector = selector or {}
    terms = [f"{key}={value}" for key, value in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        operator, key = expression["operator"], expression["key"]
        values = ",".join(expression.get("values") or [])
        terms.append(
            {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})"}.get(
                operator, key if operator == "Exists" else f"!{key}"
            )
        )
    return label_selector_matcher(",".join(terms))


def field_value(obj: Mapping[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def field_selector_matcher(text: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """``metadata.name=x,status.phase!=Running``: any dotted field, compared as text."""
    if not text:
        return lambda obj: True
    checks: list[Callable[[Mapping[str, Any]], bool]] = []
    for requirement in _split_requirements(text):
        match = re.match(r"^\s*([\w.]+)\s*(==|=|!=)\s*(\S*)\s*$", requirement)
        if match is None:
            raise ApiError(400, "BadRequest", f"invalid field selector: {requirement!r}")
        path, op, expected = match.groups()

        def check(
            obj: Mapping[str, Any], path: str = path, op: str = op, e: str = expected
        ) -> bool:
            value = field_value(obj, path)
            text = "" if value is None else str(value)
            return (text == e) if op != "!=" else (text != e)

        checks.append(check)
    return lambda obj: all(check(obj) for check in checks)


# --- patches -----------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any, *, strategic: bool = False) -> Any:
    """RFC 7386; ``strategic`` also drops ``$``-directives (its lists are replaced too)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if strategic and key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value, strategic=strategic)
    return result


class PatchConflict(Exception):
    """A json-patch operation that does not apply (a failed ``test``, a missing path)."""


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchConflict(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _resolve(document: Any, parts: list[str], path: str) -> Any:
    for part in parts:
        if isinstance(document, list):
            if not part.isdigit() or int(part) >= len(document):
                raise PatchConflict(f"path {path!r} does not exist")
            document = document[int(part)]
        elif isinstance(document, dict) and part in document:
            document = document[part]
        else:
            raise PatchConflict(f"path {path!r} does not exist")
    return document


def _add(document: Any, parts: list[str], value: Any, path: str) -> Any:
    if not parts:
        return value
    parent = _resolve(document, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last) if last.isdigit() else -1
        if not 0 <= index <= len(parent):
            raise PatchConflict(f"index {last!r} out of range at {path!r}")
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise PatchConflict(f"cannot add below a scalar at {path!r}")
    return document


def _remove(document: Any, parts: list[str], path: str) -> Any:
    if not parts:
        raise PatchConflict("cannot remove the whole document")
    parent = _resolve(document, parts[:-1], path)
    _resolve(parent, parts[-1:], path)
    if isinstance(parent, list):
        return parent.pop(int(parts[-1]))
    return parent.pop(parts[-1])


def json_patch(document: Any, operations: Iterable[Mapping[str, Any]]) -> Any:
    """RFC 6902 on a copy of ``document``; raises PatchConflict when an operation fails."""
    document = copy.deepcopy(document)
    for operation in operations:
        op, path = operation.get("op"), operation.get("path", "")
        parts = _pointer(path)
        if op == "test":
            if _resolve(document, parts, path) != operation.get("value"):
                raise PatchConflict(f"testing value {path} failed: test operation does not apply")
        elif op == "add":
            document = _add(document, parts, copy.deepcopy(operation.get("value")), path)
        elif op == "remove":
            _remove(document, parts, path)
        elif op == "replace":
            _resolve(document, parts, path)
            if parts:
                _remove(document, parts, path)
            document = _add(document, parts, copy.deepcopy(operation.get("value")), path)
        elif op in ("move", "copy"):
            source = _pointer(operation.get("from", ""))
            value = copy.deepcopy(_resolve(document, source, operation.get("from", "")))
            if op == "move":
                _remove(document, source, operation.get("from", ""))
            document = _add(document, parts, value, path)
        else:
            raise PatchConflict(f"unknown json-patch operation {op!r}")
    return document


# --- CRD schemas ---------------------------------------------------------------------------


def apply_defaults(value: Any, schema: Mapping[str, Any]) -> Any:
    """Fill absent fields that have a ``default`` in a structural schema (in place)."""
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                apply_defaults(value[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for name in set(value) - set(schema.get("properties") or {}):
                apply_defaults(value[name], extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for item in value:
            apply_defaults(item, schema["items"])
    return value


def _as_json_schema(schema: Any) -> Any:
    """OpenAPI v3 to JSON Schema: ``nullable`` becomes a null type; x-kubernetes-* dropped."""
    if isinstance(schema, list):
        return [_as_json_schema(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    result = {
        key: _as_json_schema(value)
        for key, value in schema.items()
        if not key.startswith("x-kubernetes-") and key not in ("nullable", "default", "format")
    }
    if schema.get("x-kubernetes-int-or-string"):
        result.pop("type", None)
        result["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in result:
        result["type"] = [result["type"], "null"]
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        result.pop("additionalProperties", None)
    return result


def validate(resource: ResourceType, name: str, obj: Object) -> None:
    if resource.schema is None:
        return
    schema = _as_json_schema(resource.schema)
    checked = {key: value for key, value in obj.items() if key not in ("metadata", "status")}
    schema.setdefault("properties", {}).pop("status", None)
    schema["properties"].pop("metadata", None)
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(checked), key=lambda e: list(e.path)
    )
    if errors:
        details = "; ".join(
            f"{'.'.join(str(part) for part in error.path) or '<root>'}: {error.message}"
            for error in errors
        )
        raise invalid(resource, name, details)


# --- the store -----------------------------------------------------------------------------

HARNESS_NETWORK = 10 + 2 * (os.getpid() % 100)
"""The second octet of this process's addresses: harnesses of test runs that overlap
(two pytest processes) get different addresses, so neither reaches the other's pods."""
CLUSTER_IP_NETWORK = f"127.{HARNESS_NETWORK + 1}"
"""Cluster IPs are on loopback, so the harness can listen on them."""

Listener = Callable[[WatchEvent], None]


@dataclass
class Store:
    history_size: int = 50_000
    types: dict[tuple[str, str], ResourceType] = field(default_factory=dict)
    objects: dict[tuple[str, str], dict[tuple[str, str], Object]] = field(default_factory=dict)
    revision: int = 0
    history: deque[WatchEvent] = field(init=False)
    listeners: list[Listener] = field(default_factory=list)
    type_listeners: list[Callable[[], None]] = field(default_factory=list)
    _cluster_ips: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.history = deque(maxlen=self.history_size)

    # --- resource types ---

    def register(self, resource: ResourceType) -> None:
        self.types[resource.key] = resource
        self.objects.setdefault(resource.key, {})
        for listener in self.type_listeners:
            listener()

    def unregister(self, resource: ResourceType) -> None:
        for namespace, name in list(self.objects.get(resource.key, {})):
            self._remove(resource, namespace, name)
        self.types.pop(resource.key, None)
        self.objects.pop(resource.key, None)
        for listener in self.type_listeners:
            listener()

    def resource(self, group: str, version: str, plural: str) -> ResourceType:
        resource = self.types.get((group, plural))
        if resource is None or resource.version != version:
            path = f"{group}/{version}/{plural}" if group else f"{version}/{plural}"
            raise ApiError(404, "NotFound", f"the server could not find the resource {path}")
        return resource

    def kind(self, api_version: str, kind: str) -> ResourceType:
        group, _, version = api_version.rpartition("/")
        for resource in self.types.values():
            if (resource.group, resource.version, resource.kind) == (group, version, kind):
                return resource
        raise ApiError(404, "NotFound", f"no resource for kind {kind} in {api_version}")

    # --- reads ---

    def _namespace(self, resource: ResourceType, namespace: str | None) -> str:
        return (namespace or "") if resource.namespaced else ""

    def get(self, resource: ResourceType, namespace: str | None, name: str) -> Object:
        obj = self.objects[resource.key].get((self._namespace(resource, namespace), name))
        if obj is None:
            raise not_found(resource, name)
        return copy.deepcopy(obj)

    def find(self, resource: ResourceType, namespace: str | None, name: str) -> Object | None:
        """The object, or None: for controllers that check existence."""
        obj = self.objects[resource.key].get((self._namespace(resource, namespace), name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(
        self,
        resource: ResourceType,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Object]:
        """Objects of ``namespace`` (all namespaces when None), sorted by namespace/name."""
        matches = self.matcher(label_selector, field_selector)
        return [
            copy.deepcopy(obj)
            for (object_namespace, _), obj in sorted(self.objects[resource.key].items())
            if (namespace is None or object_namespace == namespace) and matches(obj)
        ]

    @staticmethod
    def matcher(label_selector: str | None, field_selector: str | None) -> Callable[[Object], bool]:
        labels = label_selector_matcher(label_selector)
        fields = field_selector_matcher(field_selector)
        return lambda obj: labels(obj["metadata"].get("labels") or {}) and fields(obj)

    def events_since(self, revision: int) -> list[WatchEvent]:
        """Events after ``revision``; 410 Gone when the history no longer reaches back."""
        if self.history and revision < self.history[0].revision - 1:
            raise ApiError(
                410, "Expired", f"too old resource version: {revision} ({self.history[0].revision})"
            )
        return [event for event in self.history if event.revision > revision]

    # --- writes ---

    def create(self, resource: ResourceType, namespace: str | None, body: Object) -> Object:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        namespace = self._namespace(resource, namespace or meta.get("namespace"))
        if resource.namespaced and not namespace:
            raise ApiError(400, "BadRequest", f"a {resource.kind} needs a namespace")
        if meta.get("namespace") and resource.namespaced and meta["namespace"] != namespace:
            raise ApiError(
                400, "BadRequest", "the namespace of the object does not match the request's"
            )
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(resource, "", "metadata.name: Required value: name or generateName")
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta["name"] = meta["generateName"] + suffix
        name = meta["name"]
        if (namespace, name) in self.objects[resource.key]:
            raise ApiError(
                409, "AlreadyExists", f'{resource.plural}.{resource.group} "{name}" already exists'
            )
        if resource.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        for server_set in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(server_set, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
        obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
        if "status" in resource.subresources:
            obj.pop("status", None)
        self._admit(resource, obj, None)
        self._commit(resource, obj, "ADDED", None)
        return copy.deepcopy(obj)

    def replace(
        self,
        resource: ResourceType,
        namespace: str | None,
        name: str,
        body: Object,
        subresource: str | None = None,
    ) -> Object:
        old = self.get(resource, namespace, name)
        expected = (body.get("metadata") or {}).get("resourceVersion")
        if expected and expected != old["metadata"]["resourceVersion"]:
            raise self._conflict(resource, name)
        return self._update(resource, old, copy.deepcopy(body), subresource)

    def patch(
        self,
        resource: ResourceType,
        namespace: str | None,
        name: str,
        patch_type: str,
        patch: Any,
        subresource: str | None = None,
    ) -> Object:
        old = self.get(resource, namespace, name)
        if patch_type == JSON_PATCH:
            if not isinstance(patch, list):
                raise ApiError(400, "BadRequest", "a json-patch is a list of operations")
            try:
                new = json_patch(old, patch)
            except PatchConflict as error:
                raise ApiError(422, "Invalid", str(error)) from None
        elif patch_type in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
            if not isinstance(patch, Mapping):
                raise ApiError(400, "BadRequest", "a merge patch is a JSON object")
            expected = (patch.get("metadata") or {}).get("resourceVersion")
            if expected and expected != old["metadata"]["resourceVersion"]:
                raise self._conflict(resource, name)
            new = merge_patch(old, patch, strategic=patch_type == STRATEGIC_MERGE_PATCH)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {patch_type!r}")
        return self._update(resource, old, new, subresource)

    def delete(
        self,
        resource: ResourceType,
        namespace: str | None,
        name: str,
        propagation: str = "Background",
    ) -> Object:
        obj = self.get(resource, namespace, name)
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return obj
        if meta.get("finalizers"):
            new = copy.deepcopy(obj)
            new["metadata"].update(deletionTimestamp=now(), deletionGracePeriodSeconds=0)
            self._commit(resource, new, "MODIFIED", obj)
            return copy.deepcopy(new)
        self._remove(resource, meta.get("namespace", ""), name, orphan=propagation == "Orphan")
        return obj

    # --- internals ---

    @staticmethod
    def _conflict(resource: ResourceType, name: str) -> ApiError:
        return ApiError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {resource.plural}.{resource.group} "{name}": '
            "the object has been modified; please apply your changes to the latest version "
            "and try again",
        )

    def _update(
        self, resource: ResourceType, old: Object, new: Object, subresource: str | None
    ) -> Object:
        name = old["metadata"]["name"]
        if subresource == "status":
            candidate = copy.deepcopy(old)
            if "status" in new:
                candidate["status"] = new["status"]
            else:
                candidate.pop("status", None)
        elif subresource is None:
            candidate = copy.deepcopy(new)
            if "status" in resource.subresources:
                candidate.pop("status", None)
                if "status" in old:
                    candidate["status"] = copy.deepcopy(old["status"])
            meta = candidate.setdefault("metadata", {})
            for kept in (
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "resourceVersion",
            ):
                meta.pop(kept, None)
                if kept in old["metadata"]:
                    meta[kept] = old["metadata"][kept]
            candidate["apiVersion"], candidate["kind"] = resource.api_version, resource.kind
            if meta.get("deletionTimestamp"):
                added = set(meta.get("finalizers") or []) - set(
                    old["metadata"].get("finalizers") or []
                )
                if added:
                    raise invalid(
                        resource,
                        name,
                        "metadata.finalizers: Forbidden: no new finalizers can "
                        "be added if the object is being deleted",
                    )
            self._admit(resource, candidate, old)
        else:
            raise ApiError(404, "NotFound", f"no subresource {subresource!r} here")
        if _spec_of(candidate) != _spec_of(old):
            candidate["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if candidate == old:
            return old
        if candidate["metadata"].get("deletionTimestamp") and not candidate["metadata"].get(
            "finalizers"
        ):
            namespace = candidate["metadata"].get("namespace", "")
            self.objects[resource.key][(namespace, name)] = copy.deepcopy(candidate)
            self._remove(resource, namespace, name)
            return candidate
        self._commit(resource, candidate, "MODIFIED", old)
        return copy.deepcopy(candidate)

    def _admit(self, resource: ResourceType, obj: Object, old: Object | None) -> None:
        """Defaults and checks for a new state of an object, as admission would."""
        name = obj["metadata"].get("name", "")
        if resource.schema is not None:
            apply_defaults(obj, resource.schema)
            validate(resource, name, obj)
        if resource.key == ("", "services"):
            self._admit_service(obj, old)
        if resource.key == (CRD_GROUP, "customresourcedefinitions"):
            self._admit_crd(obj)

    def _admit_service(self, obj: Object, old: Object | None) -> None:
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
        previous = (old or {}).get("spec", {}).get("clusterIP")
        if previous:
            spec["clusterIP"] = previous
        elif not spec.get("clusterIP"):
            number = next(self._cluster_ips)
            spec["clusterIP"] = f"{CLUSTER_IP_NETWORK}.{number // 250}.{number % 250 + 1}"
        spec["clusterIPs"] = [spec["clusterIP"]]

    def _admit_crd(self, obj: Object) -> None:
        spec = obj.get("spec") or {}
        names = spec.get("names") or {}
        if not names.get("plural") or not names.get("kind") or not spec.get("group"):
            raise invalid(
                self.types[(CRD_GROUP, "customresourcedefinitions")],
                obj["metadata"].get("name", ""),
                "spec.group, spec.names.plural and spec.names.kind are required",
            )
        stored = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
        obj["status"] = {
            "acceptedNames": copy.deepcopy(names),
            "storedVersions": stored,
            "conditions": [
                {"type": kind, "status": "True", "reason": reason, "lastTransitionTime": now()}
                for kind, reason in (("NamesAccepted", "NoConflicts"), ("Established", "Ready"))
            ],
        }

    def _crd_resource(self, crd: Object) -> ResourceType | None:
        spec = crd["spec"]
        served = [v for v in spec.get("versions") or [] if v.get("served", True)]
        if not served:
            return None
        version = next((v for v in served if v.get("storage")), served[0])
        return ResourceType(
            group=spec["group"],
            version=version["name"],
            plural=spec["names"]["plural"],
            kind=spec["names"]["kind"],
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            subresources=frozenset(version.get("subresources") or {}),
            schema=(version.get("schema") or {}).get("openAPIV3Schema"),
        )

    def _commit(
        self, resource: ResourceType, obj: Object, event_type: str, old: Object | None
    ) -> None:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)
        meta = obj["metadata"]
        self.objects[resource.key][(meta.get("namespace", ""), meta["name"])] = copy.deepcopy(obj)
        if resource.key == (CRD_GROUP, "customresourcedefinitions"):
            registered = self._crd_resource(obj)
            if registered is not None:
                self.register(registered)
        self._emit(WatchEvent(self.revision, event_type, resource, copy.deepcopy(obj), old))

    def _emit(self, event: WatchEvent) -> None:
        self.history.append(event)
        for listener in list(self.listeners):
            listener(event)

    def _remove(
        self, resource: ResourceType, namespace: str, name: str, *, orphan: bool = False
    ) -> None:
        obj = self.objects[resource.key].pop((namespace, name), None)
        if obj is None:
            return
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)
        self._emit(WatchEvent(self.revision, "DELETED", resource, copy.deepcopy(obj)))
        if resource.key == (CRD_GROUP, "customresourcedefinitions"):
            registered = self._crd_resource(obj)
            if registered is not None:
                self.unregister(registered)
        self._collect_garbage(obj["metadata"]["uid"], orphan=orphan)

    def _live_uids(self) -> set[str]:
        return {
            obj["metadata"]["uid"] for objects in self.objects.values() for obj in objects.values()
        }

    def _collect_garbage(self, owner_uid: str, *, orphan: bool) -> None:
        """Dependents of a removed owner: deleted once no owner of theirs is left
        (background propagation), or only unlinked for an orphaning delete."""
        for key, objects in list(self.objects.items()):
            resource = self.types.get(key)
            if resource is None:
                continue
            for (namespace, name), obj in list(objects.items()):
                references = obj["metadata"].get("ownerReferences") or []
                if not any(ref.get("uid") == owner_uid for ref in references):
                    continue
                remaining = [ref for ref in references if ref.get("uid") != owner_uid]
                live = self._live_uids()
                if orphan or any(ref.get("uid") in live for ref in remaining):
                    new = copy.deepcopy(obj)
                    new["metadata"]["ownerReferences"] = remaining
                    if not remaining:
                        del new["metadata"]["ownerReferences"]
                    self._commit(resource, new, "MODIFIED", obj)
                elif (namespace, name) in objects:
                    self.delete(resource, namespace, name)


def _spec_of(obj: Object) -> Object:
    """What ``generation`` counts: everything but metadata and status."""
    return {key: value for key, value in obj.items() if key not in ("metadata", "status")}

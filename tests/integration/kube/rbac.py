"""Service account tokens and RBAC for pods that call the emulated API server.

The pod runner issues each pod a token of its ServiceAccount; a request with such a token
is allowed only what the Roles and ClusterRoles bound to that account grant, as the real
API server's RBAC authorizer decides it. Requests with any other token (the operator's
and the tests' kubeconfig) are the cluster admin's.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

from .store import ApiError, Object, Store


@dataclass(frozen=True)
class ServiceAccount:
    namespace: str
    name: str

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


@dataclass(frozen=True)
class Access:
    """One request as RBAC sees it."""

    verb: str
    group: str
    resource: str
    """The plural, with ``/subresource`` when there is one."""
    namespace: str | None
    name: str | None


@dataclass
class Authorizer:
    store: Store
    tokens: dict[str, ServiceAccount] = field(default_factory=dict)

    def issue(self, account: ServiceAccount) -> str:
        token = secrets.token_urlsafe(24)
        self.tokens[token] = account
        return token

    def check(self, authorization: str | None, access: Access) -> None:
        """Raises 403 when a service account's token asks for what it was not granted."""
        token = (authorization or "").removeprefix("Bearer ").strip()
        account = self.tokens.get(token)
        if account is None or any(_allows(rule, access) for rule in self._rules(account, access)):
            return
        where = (
            f'in the namespace "{access.namespace}"' if access.namespace else "at the cluster scope"
        )
        subject = f'{access.resource} "{access.name}"' if access.name else access.resource
        raise ApiError(
            403,
            "Forbidden",
            f'{subject} is forbidden: User "{account.user}" cannot {access.verb} resource '
            f'"{access.resource}" in API group "{access.group}" {where}',
        )

    def _rules(self, account: ServiceAccount, access: Access) -> Iterator[Object]:
        """The rules of every role bound to ``account`` that apply where ``access`` is."""
        rbac = "rbac.authorization.k8s.io"
        bindings = self.store.list(self.store.resource(rbac, "v1", "clusterrolebindings"))
        if access.namespace:
            bindings += self.store.list(
                self.store.resource(rbac, "v1", "rolebindings"), access.namespace
            )
        for binding in bindings:
            if not any(_is(subject, account) for subject in binding.get("subjects") or ()):
                continue
            ref = binding["roleRef"]
            cluster_wide = ref["kind"] == "ClusterRole"
            role = self.store.find(
                self.store.resource(rbac, "v1", "clusterroles" if cluster_wide else "roles"),
                None if cluster_wide else binding["metadata"]["namespace"],
                ref["name"],
            )
            yield from (role or {}).get("rules") or ()


def _is(subject: Object, account: ServiceAccount) -> bool:
    return (
        subject.get("kind") == "ServiceAccount"
        and subject.get("name") == account.name
        and subject.get("namespace") == account.namespace
    )


def _allows(rule: Object, access: Access) -> bool:
    def has(key: str, value: str) -> bool:
        listed = rule.get(key) or ()
        return "*" in listed or value in listed

    names = rule.get("resourceNames") or ()
    return (
        has("verbs", access.verb)
        and has("apiGroups", access.group)
        and has("resources", access.resource)
        and (not names or access.name in names)
    )


def verb(method: str, named: bool, watch: bool) -> str:
    """The RBAC verb of an HTTP request on a resource path."""
    if watch:
        return "watch"
    return {
        "GET": "get" if named else "list",
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if named else "deletecollection",
    }.get(method, method.lower())

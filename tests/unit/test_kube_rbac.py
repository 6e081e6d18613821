"""The emulated API server's RBAC for pods' service account tokens, without HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.kube.rbac import Access, Authorizer, ServiceAccount, verb
from tests.integration.kube.store import ApiError, ResourceType, Store

RBAC = "rbac.authorization.k8s.io"
CLUSTER_ROLES = ResourceType(RBAC, "v1", "clusterroles", "ClusterRole", namespaced=False)
CLUSTER_BINDINGS = ResourceType(
    RBAC, "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False
)
ROLES = ResourceType(RBAC, "v1", "roles", "Role", namespaced=True)
BINDINGS = ResourceType(RBAC, "v1", "rolebindings", "RoleBinding", namespaced=True)
BROKER = ServiceAccount("prod", "kafka")


def binding(name: str, role_kind: str, role: str, account: ServiceAccount) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": RBAC, "kind": role_kind, "name": role},
        "subjects": [
            {"kind": "ServiceAccount", "name": account.name, "namespace": account.namespace}
        ],
    }


@pytest.fixture
def authorizer() -> Authorizer:
    store = Store()
    for resource in (CLUSTER_ROLES, CLUSTER_BINDINGS, ROLES, BINDINGS):
        store.register(resource)
    store.create(
        CLUSTER_ROLES,
        None,
        {"metadata": {"name": "node-reader"},
         "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]},
    )  # fmt: skip
    store.create(
        ROLES,
        "prod",
        {"metadata": {"name": "one-map"},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"],
                    "resourceNames": ["settings"]}]},
    )  # fmt: skip
    store.create(BINDINGS, "prod", binding("one-map", "Role", "one-map", BROKER))
    return Authorizer(store)


def node(name: str) -> Access:
    return Access("get", "", "nodes", None, name)


def test_a_token_may_only_what_its_account_is_bound_to(authorizer: Authorizer) -> None:
    token = f"Bearer {authorizer.issue(BROKER)}"
    with pytest.raises(ApiError, match='User "system:serviceaccount:prod:kafka" cannot get'):
        authorizer.check(token, node("node-0"))
    authorizer.store.create(
        CLUSTER_BINDINGS, None, binding("read-nodes", "ClusterRole", "node-reader", BROKER)
    )
    authorizer.check(token, node("node-0"))
    with pytest.raises(ApiError, match="cannot list resource"):
        authorizer.check(token, Access("list", "", "nodes", None, None))
    # Another account's token is not given what this one is.
    other = f"Bearer {authorizer.issue(ServiceAccount('prod', 'other'))}"
    with pytest.raises(ApiError) as refused:
        authorizer.check(other, node("node-0"))
    assert refused.value.code == 403


def test_roles_hold_in_their_namespace_and_for_their_names(authorizer: Authorizer) -> None:
    token = f"Bearer {authorizer.issue(BROKER)}"
    authorizer.check(token, Access("patch", "", "configmaps", "prod", "settings"))
    for refused in (
        Access("patch", "", "configmaps", "prod", "other"),
        Access("patch", "", "configmaps", "staging", "settings"),
        Access("delete", "", "configmaps", "prod", "settings"),
        Access("get", "", "configmaps/status", "prod", "settings"),
    ):
        with pytest.raises(ApiError, match="forbidden"):
            authorizer.check(token, refused)


def test_requests_without_a_pod_token_are_the_admins(authorizer: Authorizer) -> None:
    authorizer.check(None, node("node-0"))
    authorizer.check("Bearer harness", Access("delete", "", "nodes", None, "node-0"))


@pytest.mark.parametrize(
    ("method", "named", "watch", "expected"),
    [
        ("GET", True, False, "get"),
        ("GET", False, False, "list"),
        ("GET", False, True, "watch"),
        ("POST", False, False, "create"),
        ("PUT", True, False, "update"),
        ("PATCH", True, False, "patch"),
        ("DELETE", True, False, "delete"),
        ("DELETE", False, False, "deletecollection"),
    ],
)
def test_http_methods_are_rbac_verbs(method: str, named: bool, watch: bool, expected: str) -> None:
    assert verb(method, named, watch) == expected

"""The Helm chart as `helm` renders it: lint, every manifest valid for Kubernetes, the
CRDs the very files of crds/, RBAC that fits the watched namespaces, and a Deployment
whose settings the operator reads as the chart meant."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from brook_operator import broker_resources
from brook_operator.broker_resources import BrokerSpec, broker_env
from brook_operator.settings import OperatorSettings

from tests.support.crds import REPOSITORY, crd_files

CHART = REPOSITORY / "helm" / "brook-operator"
OLDEST_KUBERNETES = "1.29"
NEWEST_KUBERNETES = kubernetes_validate.latest_version()
RELEASE = "brook"
NAMESPACE = "brook-system"

VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "namespaced": ["--set", "watchNamespaces={team-a,team-b}"],
    "monitored": [
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.labels.release=prometheus",
    ],
    "custom": [
        "--set",
        "image.repository=registry.example/brook-operator",
        "--set",
        "image.tag=1.2.3",
        "--set",
        "brokerImage.tag=1.2.3",
        "--set",
        "logLevel=DEBUG",
        "--set",
        "serviceAccount.name=brook-op",
        "--set",
        "metrics.service.enabled=false",
        "--set",
        "fullnameOverride=brook-op",
        "--set",
        "nodeSelector.kubernetes\\.io/os=linux",
        "--set",
        "podAnnotations.team=streaming",
    ],
}


@pytest.fixture(scope="module")
def helm() -> str:
    path = shutil.which("helm")
    if path is None:
        pytest.skip("helm is not installed (scripts/setup.sh installs it)")
    return path


def run_helm(helm: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, *arguments], capture_output=True, text=True, timeout=60, check=False
    )


def render(helm: str, values: Sequence[str] = (), include_crds: bool = False) -> list[dict]:
    arguments = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values]
    if include_crds:
        arguments.append("--include-crds")
    result = run_helm(helm, *arguments)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(manifests: list[dict], kind: str) -> list[dict]:
    return [m for m in manifests if m["kind"] == kind]


def only(manifests: list[dict], kind: str) -> dict:
    [manifest] = by_kind(manifests, kind)
    return manifest


@pytest.fixture(scope="module")
def rendered(helm: str) -> dict[str, list[dict]]:
    return {name: render(helm, values, include_crds=True) for name, values in VALUE_SETS.items()}


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_lint_passes(helm: str, values: str) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), *VALUE_SETS[values])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_every_manifest_is_valid_kubernetes(
    rendered: dict[str, list[dict]], values: str, version: str
) -> None:
    for manifest in rendered[values]:
        if manifest["kind"] == "ServiceMonitor":
            continue  # the Prometheus Operator's CRD: checked in test_service_monitor_*
        kubernetes_validate.validate(manifest, version, strict=True)


def test_crds_are_the_files_of_the_crds_directory(rendered: dict[str, list[dict]]) -> None:
    shipped = {
        crd["metadata"]["name"]: crd
        for crd in by_kind(rendered["defaults"], "CustomResourceDefinition")
    }
    source = {path.stem: yaml.safe_load(path.read_text()) for path in crd_files()}
    assert shipped == source


def test_crds_are_not_templated(helm: str) -> None:
    """In crds/ they are installed before the templates and never deleted by an uninstall."""
    kinds = {m["kind"] for m in render(helm)}
    assert "CustomResourceDefinition" not in kinds


def test_packaged_chart_carries_the_crds(helm: str, tmp_path: Path) -> None:
    result = run_helm(helm, "package", str(CHART), "--destination", str(tmp_path))
    assert result.returncode == 0, result.stderr
    [archive] = tmp_path.glob("brook-operator-*.tgz")
    with tarfile.open(archive) as tar:
        packaged = {
            Path(member.name).name: tar.extractfile(member).read().decode()  # type: ignore[union-attr]
            for member in tar.getmembers()
            if member.name.startswith("brook-operator/crds/") and member.isfile()
        }
    assert packaged == {path.name: path.read_text() for path in crd_files()}


def test_values_file_satisfies_the_values_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        (["--set", "logLevel=LOUD"], "logLevel"),
        (["--set", "replicas=2"], "replicas"),
        (["--set", "watchNamespaces={Team_A}"], "watchNamespaces"),
        (["--set", "metrics.port=0"], "metrics.port"),
    ],
)
def test_wrong_values_are_refused_by_name(helm: str, values: list[str], complaint: str) -> None:
    arguments = ["template", RELEASE, str(CHART), *values]
    result = run_helm(helm, *arguments)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_service_monitor_needs_the_metrics_service(helm: str) -> None:
    result = run_helm(
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.service.enabled=false",
    )
    assert result.returncode != 0
    assert "needs metrics.service.enabled" in result.stderr


def operator_container(manifests: list[dict]) -> dict[str, Any]:
    [container] = only(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def settings_of(manifests: list[dict]) -> OperatorSettings:
    env = {item["name"]: item["value"] for item in operator_container(manifests)["env"]}
    return OperatorSettings.from_env(env)


def test_operator_reads_the_settings_the_chart_gives(rendered: dict[str, list[dict]]) -> None:
    defaults = settings_of(rendered["defaults"])
    assert defaults.clusterwide
    assert defaults.broker_image == "brook-broker:0.1.0"
    assert defaults.standalone
    assert settings_of(rendered["namespaced"]).namespaces == ("team-a", "team-b")
    custom = settings_of(rendered["custom"])
    assert (custom.broker_image, custom.log_level) == ("brook-broker:1.2.3", "DEBUG")
    rack_roles = [
        role["metadata"]["name"]
        for role in by_kind(rendered["defaults"], "ClusterRole")
        if role["metadata"]["name"].endswith("-broker-rack")
    ]
    assert [defaults.rack_cluster_role] == rack_roles
    container = operator_container(rendered["custom"])
    assert container["image"] == "registry.example/brook-operator:1.2.3"


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_probe_and_ports_are_where_the_operator_listens(
    rendered: dict[str, list[dict]], values: str
) -> None:
    settings = settings_of(rendered[values])
    container = operator_container(rendered[values])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": settings.metrics_port, "health": settings.health_port}
    probe = container["livenessProbe"]["httpGet"]
    assert (probe["path"], ports[probe["port"]]) == ("/healthz", settings.health_port)


def test_one_replica_never_two_at_once(rendered: dict[str, list[dict]]) -> None:
    """Without Kopf's peering, two operators would handle the same resources twice."""
    spec = only(rendered["defaults"], "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_runs_non_root_on_a_read_only_root(rendered: dict[str, list[dict]], values: str) -> None:
    pod = only(rendered[values], "Deployment")["spec"]["template"]["spec"]
    container = operator_container(rendered[values])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["serviceAccountName"] == only(rendered[values], "ServiceAccount")["metadata"]["name"]


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_standard_labels_on_every_object(rendered: dict[str, list[dict]], values: str) -> None:
    for manifest in rendered[values]:
        if manifest["kind"] == "CustomResourceDefinition":
            continue
        labels = manifest["metadata"]["labels"]
        for key in ("name", "instance", "version", "managed-by", "component", "part-of"):
            assert f"app.kubernetes.io/{key}" in labels, (manifest["kind"], key)
        assert labels["app.kubernetes.io/instance"] == RELEASE


def test_deployment_selector_picks_its_pods_and_the_service_targets_them(
    rendered: dict[str, list[dict]],
) -> None:
    manifests = rendered["defaults"]
    deployment = only(manifests, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    service = only(manifests, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == "metrics"


def test_service_monitor_selects_the_metrics_service(rendered: dict[str, list[dict]]) -> None:
    manifests = rendered["monitored"]
    monitor = only(manifests, "ServiceMonitor")
    service = only(manifests, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (service["spec"]["ports"][0]["name"], "/metrics")


def test_no_service_monitor_unless_asked(rendered: dict[str, list[dict]]) -> None:
    assert by_kind(rendered["defaults"], "ServiceMonitor") == []


def grants(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_cluster_wide_rbac_by_default(rendered: dict[str, list[dict]]) -> None:
    manifests = rendered["defaults"]
    assert by_kind(manifests, "Role") == []
    roles = {
        role["metadata"]["name"]: grants(role["rules"])
        for role in by_kind(manifests, "ClusterRole")
    }
    assert set(roles) == {
        "brook-brook-operator",
        "brook-brook-operator-discovery",
        "brook-brook-operator-broker-rack",
    }
    assert ("apps", "statefulsets", "create") in roles["brook-brook-operator"]
    bindings = by_kind(manifests, "ClusterRoleBinding")
    account = only(manifests, "ServiceAccount")["metadata"]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}
        ]
    # The rack role is not the operator's own: it binds it to rack-aware brokers.
    assert {b["roleRef"]["name"] for b in bindings} == set(roles) - {
        "brook-brook-operator-broker-rack"
    }


@pytest.mark.parametrize("values", ["defaults", "namespaced"])
def test_rack_aware_brokers_may_read_nodes_and_nothing_else(
    rendered: dict[str, list[dict]], values: str
) -> None:
    roles = {role["metadata"]["name"]: role for role in by_kind(rendered[values], "ClusterRole")}
    rack = roles.pop("brook-brook-operator-broker-rack")
    assert grants(rack["rules"]) == {("", "nodes", "get")}
    # The operator may bind that role, and no other one, to a Broker's ServiceAccount.
    [bind] = [rule for rule in roles["brook-brook-operator-discovery"]["rules"]
              if "bind" in rule["verbs"]]  # fmt: skip
    assert (bind["resources"], bind["verbs"]) == (["clusterroles"], ["bind"])
    assert bind["resourceNames"] == ["brook-brook-operator-broker-rack"]
    assert settings_of(rendered[values]).rack_cluster_role == "brook-brook-operator-broker-rack"


def test_watched_namespaces_get_roles_and_nothing_else_is_writable(
    rendered: dict[str, list[dict]],
) -> None:
    manifests = rendered["namespaced"]
    roles = by_kind(manifests, "Role")
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in by_kind(manifests, "RoleBinding")) == [
        "team-a",
        "team-b",
    ]
    cluster_roles = {role["metadata"]["name"]: role for role in by_kind(manifests, "ClusterRole")}
    discovery = grants(cluster_roles["brook-brook-operator-discovery"]["rules"])
    # Beyond reading, only the (cluster-scoped) rack bindings of rack-aware Brokers.
    assert {(r, verb) for _, r, verb in discovery if verb not in ("get", "list", "watch")} == {
        ("clusterrolebindings", "create"),
        ("clusterrolebindings", "patch"),
        ("clusterrolebindings", "delete"),
        ("clusterroles", "bind"),
    }


def operator_role(manifests: list[dict]) -> set[tuple[str, str, str]]:
    """What the operator may do in a watched namespace (the same in each of them)."""
    roles = [
        grants(role["rules"])
        for role in manifests
        if role["kind"] in ("ClusterRole", "Role")
        and not role["metadata"]["name"].endswith(("-discovery", "-broker-rack"))
    ]
    assert roles and all(role == roles[0] for role in roles)
    return roles[0]


def broker_objects() -> list[dict[str, Any]]:
    """The objects the operator makes for the example Broker, made rack-aware."""
    broker = yaml.safe_load((REPOSITORY / "examples" / "broker.yaml").read_text())
    broker["spec"]["rack"] = {"enabled": True}
    spec = BrokerSpec.parse(broker["spec"], default_image="brook-broker:0.1.0")
    env = broker_env(spec)
    return broker_resources.manifests(
        broker["metadata"]["name"], "default", spec, env, "brook-brook-operator-broker-rack"
    )


@pytest.mark.parametrize("values", ["defaults", "namespaced"])
def test_rbac_lets_the_operator_manage_every_object_of_a_broker(
    rendered: dict[str, list[dict]], values: str
) -> None:
    granted = operator_role(rendered[values])
    [discovery] = [
        grants(role["rules"])
        for role in by_kind(rendered[values], "ClusterRole")
        if role["metadata"]["name"].endswith("-discovery")
    ]
    for manifest in broker_objects():
        group = manifest["apiVersion"].rpartition("/")[0]
        plural = manifest["kind"].lower() + "s"
        if "namespace" in manifest["metadata"]:
            for verb in ("get", "list", "watch", "create", "patch", "delete"):
                assert (group, plural, verb) in granted, (manifest["kind"], verb)
        else:  # cluster-scoped: the rack binding, which the operator reads by name
            for verb in ("get", "create", "patch", "delete"):
                assert (group, plural, verb) in discovery, (manifest["kind"], verb)
    assert ("apps", "statefulsets/status", "get") in granted
    for kind in ("brokers", "topics", "consumergroups"):
        assert {("brook.dev", kind, v) for v in ("get", "list", "watch", "patch")} <= granted
        assert ("brook.dev", f"{kind}/status", "patch") in granted
        assert ("brook.dev", f"{kind}/finalizers", "update") in granted
    assert ("", "events", "create") in granted


@pytest.mark.parametrize("values", ["defaults", "namespaced"])
def test_rbac_grants_nothing_beyond_its_work(rendered: dict[str, list[dict]], values: str) -> None:
    granted = operator_role(rendered[values])
    for kind in ("brokers", "topics", "consumergroups"):
        assert ("brook.dev", kind, "create") not in granted
        assert ("brook.dev", kind, "delete") not in granted
    assert {resource for _, resource, _ in granted} & {"nodes", "*"} == set()
    assert {verb for _, _, verb in granted} & {"*", "escalate", "bind", "impersonate"} == set()
    # Broker pods are deleted one at a time for rolling restarts; volume claims only read;
    # a Broker's cluster secret is read by name, never listed, and never deleted.
    for resource, allowed in (
        ("pods", {"get", "list", "watch", "delete"}),
        ("persistentvolumeclaims", {"get", "list", "watch"}),
        ("secrets", {"get", "create", "patch"}),
    ):
        verbs = {verb for group, r, verb in granted if (group, r) == ("", resource)}
        assert verbs == allowed


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
def test_objects_the_operator_makes_for_the_example_are_valid(version: str) -> None:
    secret = broker_resources.cluster_secret("example", "default", "value")
    for manifest in [*broker_objects(), secret]:
        kubernetes_validate.validate(manifest, version, strict=True)

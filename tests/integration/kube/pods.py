"""The pod runner: the StatefulSet and Deployment controllers and a kubelet, on this machine.

Controllers turn StatefulSets and Deployments into Pod objects (and PVCs) and report the
sets' status; the kubelet runs the single container of every Pod through a container
runtime (:mod:`.runtimes`: a local process by default, or the container's image):

- each pod has its own address on this process's 127.N.0.0/16, the same for a pod name
  across restarts,
  and a node of its own (``node-N``, a Node object labelled with a zone ``zone-a/b/c``);
- the container's ``command``/``args`` and env follow Kubernetes: ``fieldRef`` values,
  ``configMapKeyRef``/``secretKeyRef``, ``envFrom``, ``$(VAR)`` expansion;
- volumes are directories: a PVC's outlives its pods; each is mounted at the container's
  ``mountPath``;
  a ``configMap`` or ``secret`` volume holds a file per key (or per ``items`` entry) with
  its ``defaultMode`` (or the item's ``mode``), and is mounted read-only, as a kubelet
  does; so is any volume mounted ``readOnly``;
- like a kubelet, it points every pod at the API server (``KUBERNETES_SERVICE_HOST`` and
  ``_PORT``, over TLS) and, unless ``automountServiceAccountToken`` is false, mounts its
  ServiceAccount's token, the CA and the namespace at the usual path; what the token may
  do is what RBAC grants that ServiceAccount;
- the readinessProbe (httpGet) decides the pod's Ready condition; a process that exits is
  restarted (restartCount grows); a Pod object deleted has its process stopped (SIGTERM,
  SIGKILL after the grace period) before a pod of the same name starts again;
- a StatefulSet's ``updateStrategy`` is followed: ``RollingUpdate`` replaces outdated pods
  itself, highest ordinal first; under ``OnDelete`` a template change restarts nothing,
  and a pod deleted comes back with the current template.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import signal
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brook_cli import local

from .rbac import Authorizer, ServiceAccount
from .runtimes import (
    Container,
    ContainerConfigError,
    ContainerRuntime,
    Mount,
    ProcessRuntime,
    SecurityContext,
)
from .store import HARNESS_NETWORK, ApiError, Object, Store, WatchEvent, now

POD_NETWORK = f"127.{HARNESS_NETWORK}"
MAX_GRACE_S = 15.0
"""A stopping pod gets its terminationGracePeriodSeconds, at most this long."""
PROBE_PERIOD_MAX_S = 1.0
"""Probes run at their periodSeconds, at most this far apart: tests wait less."""
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)
ZONES = ("zone-a", "zone-b", "zone-c")
SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"

_DEFAULT_MODE = 0o644
"""A configMap or secret volume's files without a ``defaultMode``, as in Kubernetes."""


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: unknown names stay as written, ``$$`` is ``$``."""
    out: list[str] = []
    index = 0
    while index < len(text):
        if text.startswith("$$", index):
            out.append("$")
            index += 2
            continue
        if text.startswith("$(", index):
            end = text.find(")", index + 2)
            if end != -1:
                name = text[index + 2 : end]
                out.append(variables.get(name, text[index : end + 1]))
                index = end + 1
                continue
        out.append(text[index])
        index += 1
    return "".join(out)


def template_hash(template: Object) -> str:
    text = json.dumps(template, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def pod_ready(pod: Object) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def owned_by(obj: Object, owner: Object) -> bool:
    uid = owner["metadata"]["uid"]
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


def _owner_reference(owner: Object) -> Object:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


@dataclass(frozen=True)
class ApiEndpoint:
    """Where pods reach the API server, and how they trust and authenticate to it."""

    host: str
    port: int
    ca: Path
    """The CA certificate (PEM) of the server's TLS certificate."""
    authorizer: Authorizer


class PodRunner:
    """Runs inside the harness's event loop; ``run()`` until cancelled, then ``stop()``."""

    def __init__(
        self,
        store: Store,
        root: Path,
        api: ApiEndpoint,
        before_start: Callable[[], object] = lambda: None,
        runtime: ContainerRuntime | None = None,
    ) -> None:
        self.store = store
        self.root = root
        self.api = api
        self.runtime: ContainerRuntime = runtime or ProcessRuntime(home=root)
        """Runs each container: a local process (default) or its image."""
        self._made_mount_points = not Path(SERVICE_ACCOUNT_PATH).exists()
        self.before_start = before_start
        """Called before containers start, once their pods have addresses: the service
        network publishes the names then, so a starting broker resolves its peers."""
        self.instances: dict[tuple[str, str], PodInstance] = {}
        self.ips: dict[tuple[str, str], str] = {}
        self.nodes: dict[tuple[str, str], str] = {}
        self._wake = asyncio.Event()
        self._retiring: set[asyncio.Task[None]] = set()
        self._kinds = {
            name: store.resource(group, "v1", plural)
            for name, (group, plural) in {
                "pods": ("", "pods"),
                "configmaps": ("", "configmaps"),
                "secrets": ("", "secrets"),
                "pvcs": ("", "persistentvolumeclaims"),
                "nodes": ("", "nodes"),
                "serviceaccounts": ("", "serviceaccounts"),
                "statefulsets": ("apps", "statefulsets"),
                "deployments": ("apps", "deployments"),
            }.items()
        }
        store.listeners.append(self._on_event)

    # --- loop ---

    def _on_event(self, event: WatchEvent) -> None:
        if event.resource.plural in ("pods", "statefulsets", "deployments", "configmaps"):
            self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.5)
            self._wake.clear()
            try:
                self.reconcile()
            except ApiError as error:  # a conflicting write: the next round sees fresh state
                print(f"pod runner: {error.message}")

    def reconcile(self) -> None:
        for stateful_set in self.store.list(self._kinds["statefulsets"]):
            if not stateful_set["metadata"].get("deletionTimestamp"):
                self._reconcile_stateful_set(stateful_set)
        for deployment in self.store.list(self._kinds["deployments"]):
            if not deployment["metadata"].get("deletionTimestamp"):
                self._reconcile_deployment(deployment)
        self._reconcile_kubelet()

    async def stop(self) -> None:
        """Stop every process: SIGTERM to all at once, SIGKILL after the grace periods."""
        self.store.listeners.remove(self._on_event)
        instances, self.instances = list(self.instances.values()), {}
        await asyncio.gather(*(instance.stop() for instance in instances), *self._retiring)
        await self.runtime.close()
        if self._made_mount_points:
            # Mount points the pods' bind mounts made on this machine: gone if still empty.
            with contextlib.suppress(OSError):
                os.removedirs(SERVICE_ACCOUNT_PATH)

    # --- addresses and nodes ---

    def pod_ip(self, namespace: str, name: str) -> str:
        key = (namespace, name)
        if key not in self.ips:
            number = len(self.ips) + 1
            self.ips[key] = f"{POD_NETWORK}.{number // 250}.{number % 250 + 1}"
        return self.ips[key]

    def node_for(self, namespace: str, name: str) -> str:
        key = (namespace, name)
        if key not in self.nodes:
            index = len(self.nodes)
            node = f"node-{index}"
            self.nodes[key] = node
            if self.store.find(self._kinds["nodes"], None, node) is None:
                labels = {
                    "kubernetes.io/hostname": node,
                    "topology.kubernetes.io/zone": ZONES[index % len(ZONES)],
                }
                self.store.create(
                    self._kinds["nodes"], None, {"metadata": {"name": node, "labels": labels}}
                )
        return self.nodes[key]

    def volume_dir(self, namespace: str, claim: str) -> Path:
        return self.root / "volumes" / namespace / claim

    def log_path(self, namespace: str, name: str) -> Path:
        return self.root / "logs" / namespace / f"{name}.log"

    # --- StatefulSet controller ---

    def _owned_pods(self, owner: Object) -> dict[str, Object]:
        namespace = owner["metadata"]["namespace"]
        return {
            pod["metadata"]["name"]: pod
            for pod in self.store.list(self._kinds["pods"], namespace)
            if owned_by(pod, owner)
        }

    def _reconcile_stateful_set(self, stateful_set: Object) -> None:
        meta, spec = stateful_set["metadata"], stateful_set["spec"]
        namespace, name = meta["namespace"], meta["name"]
        replicas = int(spec.get("replicas", 1))
        revision = f"{name}-{template_hash(spec['template'])}"
        ordered = spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
        pods = self._owned_pods(stateful_set)
        # Pods of a name still owned by no one (a deleted set's orphan) are left alone.
        for ordinal in range(replicas):
            pod_name = f"{name}-{ordinal}"
            if pod_name in pods:
                continue
            if self.store.find(self._kinds["pods"], namespace, pod_name) is not None:
                continue
            if ordered and not all(
                pod_ready(pods[f"{name}-{i}"]) if f"{name}-{i}" in pods else False
                for i in range(ordinal)
            ):
                break
            pods[pod_name] = self._create_stateful_pod(stateful_set, ordinal, revision)
        surplus = sorted(
            (p for p in pods if int(p.rsplit("-", 1)[1]) >= replicas),
            key=lambda p: -int(p.rsplit("-", 1)[1]),
        )
        for pod_name in surplus[:1] if ordered else surplus:
            self._delete_pod(namespace, pod_name)
        strategy = (spec.get("updateStrategy") or {}).get("type", "RollingUpdate")
        in_range = [pods[p] for p in pods if int(p.rsplit("-", 1)[1]) < replicas]
        outdated = sorted(
            (
                p
                for p in in_range
                if p["metadata"]["labels"].get("controller-revision-hash") != revision
            ),
            key=lambda p: -int(p["metadata"]["name"].rsplit("-", 1)[1]),
        )
        everyone_ready = len(in_range) == replicas and all(pod_ready(p) for p in in_range)
        if strategy == "RollingUpdate" and outdated and everyone_ready:
            self._delete_pod(namespace, outdated[0]["metadata"]["name"])
        updated = sum(
            1
            for p in in_range
            if p["metadata"]["labels"].get("controller-revision-hash") == revision
        )
        previous = stateful_set.get("status") or {}
        current_revision = (
            revision if updated == len(in_range) else previous.get("currentRevision", revision)
        )
        ready = sum(1 for p in pods.values() if pod_ready(p))
        self._set_status(
            "statefulsets",
            stateful_set,
            {
                "replicas": len(pods),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "currentReplicas": sum(
                    1
                    for p in in_range
                    if p["metadata"]["labels"].get("controller-revision-hash") == current_revision
                ),
                "updatedReplicas": updated,
                "currentRevision": current_revision,
                "updateRevision": revision,
                "observedGeneration": meta.get("generation", 1),
                "collisionCount": 0,
            },
        )

    def _create_stateful_pod(self, stateful_set: Object, ordinal: int, revision: str) -> Object:
        meta, spec = stateful_set["metadata"], stateful_set["spec"]
        namespace, pod_name = meta["namespace"], f"{meta['name']}-{ordinal}"
        template = spec["template"]
        pod_spec = json.loads(json.dumps(template.get("spec") or {}))
        pod_spec.update(hostname=pod_name, subdomain=spec.get("serviceName", ""))
        volumes = pod_spec.setdefault("volumes", [])
        for claim_template in spec.get("volumeClaimTemplates") or []:
            claim = claim_template["metadata"]["name"]
            claim_name = f"{claim}-{pod_name}"
            self._ensure_claim(namespace, claim_name, claim_template)
            volumes.append({"name": claim, "persistentVolumeClaim": {"claimName": claim_name}})
        labels = {
            **((template.get("metadata") or {}).get("labels") or {}),
            "statefulset.kubernetes.io/pod-name": pod_name,
            "apps.kubernetes.io/pod-index": str(ordinal),
            "controller-revision-hash": revision,
        }
        return self._create_pod(stateful_set, pod_name, labels, template, pod_spec)

    def _ensure_claim(self, namespace: str, claim_name: str, claim_template: Object) -> None:
        if self.store.find(self._kinds["pvcs"], namespace, claim_name) is not None:
            return
        claim = self.store.create(
            self._kinds["pvcs"],
            namespace,
            {
                "metadata": {
                    "name": claim_name,
                    "labels": (claim_template.get("metadata") or {}).get("labels") or {},
                },
                "spec": claim_template.get("spec") or {},
            },
        )
        claim["status"] = {
            "phase": "Bound",
            "accessModes": (claim_template.get("spec") or {}).get("accessModes", []),
            "capacity": ((claim_template.get("spec") or {}).get("resources") or {}).get(
                "requests", {}
            ),
        }
        self.store.replace(self._kinds["pvcs"], namespace, claim_name, claim, "status")
        self.volume_dir(namespace, claim_name).mkdir(parents=True, exist_ok=True)

    def _create_pod(
        self,
        owner: Object,
        pod_name: str,
        labels: Mapping[str, str],
        template: Object,
        pod_spec: Object,
    ) -> Object:
        namespace = owner["metadata"]["namespace"]
        pod_spec["nodeName"] = self.node_for(namespace, pod_name)
        pod_spec.setdefault("restartPolicy", "Always")
        pod_spec.setdefault("terminationGracePeriodSeconds", 30)
        return self.store.create(
            self._kinds["pods"],
            namespace,
            {
                "metadata": {
                    "name": pod_name,
                    "labels": dict(labels),
                    "annotations": (template.get("metadata") or {}).get("annotations") or {},
                    "ownerReferences": [_owner_reference(owner)],
                },
                "spec": pod_spec,
            },
        )

    def _delete_pod(self, namespace: str, name: str) -> None:
        with contextlib.suppress(ApiError):
            self.store.delete(self._kinds["pods"], namespace, name)

    def _set_status(self, kind: str, obj: Object, status: Object) -> None:
        if obj.get("status") == status:
            return
        updated = dict(obj, status=status)
        meta = obj["metadata"]
        self.store.replace(
            self._kinds[kind], meta.get("namespace"), meta["name"], updated, "status"
        )

    # --- Deployment controller (pods owned by the Deployment itself, no ReplicaSets) ---

    def _reconcile_deployment(self, deployment: Object) -> None:
        meta, spec = deployment["metadata"], deployment["spec"]
        namespace, name = meta["namespace"], meta["name"]
        replicas = int(spec.get("replicas", 1))
        template = spec["template"]
        revision = template_hash(template)
        pods = sorted(
            self._owned_pods(deployment).values(),
            key=lambda p: p["metadata"]["creationTimestamp"] + p["metadata"]["name"],
        )
        current = [p for p in pods if p["metadata"]["labels"].get("pod-template-hash") == revision]
        old = [p for p in pods if p not in current]
        for _ in range(replicas - len(current)):
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            labels = {**((template.get("metadata") or {}).get("labels") or {})}
            labels["pod-template-hash"] = revision
            pod_spec = json.loads(json.dumps(template.get("spec") or {}))
            current.append(
                self._create_pod(
                    deployment, f"{name}-{revision}-{suffix}", labels, template, pod_spec
                )
            )
        for pod in current[replicas:][::-1]:
            self._delete_pod(namespace, pod["metadata"]["name"])
        current = current[:replicas]
        if all(pod_ready(p) for p in current):
            for pod in old:
                self._delete_pod(namespace, pod["metadata"]["name"])
        ready = sum(1 for p in current if pod_ready(p))
        self._set_status(
            "deployments",
            deployment,
            {
                "replicas": len(current) + len(old),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "updatedReplicas": len(current),
                "observedGeneration": meta.get("generation", 1),
                "conditions": [
                    {
                        "type": "Available",
                        "status": "True" if ready >= replicas else "False",
                        "reason": "MinimumReplicasAvailable" if ready >= replicas else "Scaling",
                    }
                ],
            },
        )

    # --- kubelet ---

    def _reconcile_kubelet(self) -> None:
        pods = {
            (pod["metadata"]["namespace"], pod["metadata"]["name"]): pod
            for pod in self.store.list(self._kinds["pods"])
        }
        for key, instance in list(self.instances.items()):
            pod = pods.get(key)
            gone = pod is None or pod["metadata"]["uid"] != instance.uid
            terminating = gone or bool(pod["metadata"].get("deletionTimestamp"))
            if terminating and not instance.stopping:
                instance.stopping = True
                retiring = asyncio.get_running_loop().create_task(self._retire(key, instance))
                self._retiring.add(retiring)
                retiring.add_done_callback(self._retiring.discard)
        starting = []
        for key, pod in pods.items():
            if key not in self.instances and not pod["metadata"].get("deletionTimestamp"):
                instance = PodInstance(self, pod)
                self.instances[key] = instance
                instance.report()  # its address, before any container of the round starts
                starting.append(instance)
        if starting:
            self.before_start()
        for instance in starting:
            instance.start()

    async def _retire(self, key: tuple[str, str], instance: PodInstance) -> None:
        await instance.stop()
        if self.instances.get(key) is instance:
            del self.instances[key]
        self._wake.set()

    def write_pod_status(self, namespace: str, name: str, uid: str, status: Object) -> None:
        pod = self.store.find(self._kinds["pods"], namespace, name)
        if pod is None or pod["metadata"]["uid"] != uid or pod.get("status") == status:
            return
        pod["status"] = status
        self.store.replace(self._kinds["pods"], namespace, name, pod, "status")

    def container_of(self, pod: Object, start: int) -> Container:
        """The pod's first container as a container runtime gets it: command and args
        with ``$(VAR)`` expanded, the environment (the manifest's, and the kubelet's own:
        the API server's address, the pod's name), the volumes and the securityContext.
        ``start`` counts the container's starts (its name is new each time)."""
        meta, spec = pod["metadata"], pod["spec"]
        namespace = meta["namespace"]
        container = spec["containers"][0]
        variables: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for key, value in self._source_data(namespace, source).items():
                variables[prefix + key] = value
        for item in container.get("env") or []:
            if "value" in item:
                variables[item["name"]] = expand(str(item["value"]), variables)
            elif "valueFrom" in item:
                value = self._value_from(pod, item["valueFrom"])
                if value is not None:
                    variables[item["name"]] = value
        mounts = self._mounts(pod, container)
        if self._automounts_token(pod):
            mounts.append(
                Mount(
                    self._service_account_dir(pod),
                    SERVICE_ACCOUNT_PATH,
                    read_only=True,
                    owned_by_fs_group=False,
                )
            )
        name = container.get("name", "main")
        return Container(
            name=f"k8s_{name}_{meta['name']}_{namespace}_{meta['uid'][:8]}_{start}",
            image=container.get("image", ""),
            command=[expand(part, variables) for part in container.get("command") or []],
            args=[expand(part, variables) for part in container.get("args") or []],
            env={
                "HOSTNAME": meta["name"],
                "KUBERNETES_SERVICE_HOST": self.api.host,
                "KUBERNETES_SERVICE_PORT": str(self.api.port),
                **variables,
            },
            mounts=mounts,
            working_dir=container.get("workingDir"),
            security=SecurityContext.of(spec, container),
        )

    def _source_data(self, namespace: str, source: Object) -> dict[str, str]:
        if "configMapRef" in source:
            ref, kind = source["configMapRef"], "configmaps"
        elif "secretRef" in source:
            ref, kind = source["secretRef"], "secrets"
        else:
            return {}
        obj = self.store.find(self._kinds[kind], namespace, ref["name"])
        if obj is None:
            if ref.get("optional"):
                return {}
            raise ContainerConfigError(f'{kind[:-1]} "{ref["name"]}" not found')
        if kind == "secrets":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    def _value_from(self, pod: Object, value_from: Object) -> str | None:
        if "fieldRef" in value_from:
            path = value_from["fieldRef"]["fieldPath"]
            for mapping in ("labels", "annotations"):
                prefix = f"metadata.{mapping}['"
                if path.startswith(prefix):
                    return (pod["metadata"].get(mapping) or {}).get(path[len(prefix) : -2], "")
            value: Any = pod
            for part in path.split("."):
                value = value.get(part) if isinstance(value, Mapping) else None
            return "" if value is None else str(value)
        for ref_key, kind in (("configMapKeyRef", "configmaps"), ("secretKeyRef", "secrets")):
            if ref_key in value_from:
                ref = value_from[ref_key]
                data = self._source_data(
                    pod["metadata"]["namespace"],
                    {
                        "configMapRef" if kind == "configmaps" else "secretRef": {
                            "name": ref["name"],
                            "optional": ref.get("optional", False),
                        }
                    },
                )
                if ref["key"] not in data and not ref.get("optional"):
                    raise ContainerConfigError(
                        f'key "{ref["key"]}" not in {kind[:-1]} {ref["name"]}'
                    )
                return data.get(ref["key"])
        return None

    def _instance_dir(self, pod: Object) -> Path:
        """This Pod object's own files: a new pod of the same name gets new ones."""
        meta = pod["metadata"]
        return self.root / "pods" / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"

    def _automounts_token(self, pod: Object) -> bool:
        """The pod's ``automountServiceAccountToken``, else its ServiceAccount's, else yes."""
        choice = pod["spec"].get("automountServiceAccountToken")
        if choice is None:
            account = self.store.find(
                self._kinds["serviceaccounts"],
                pod["metadata"]["namespace"],
                pod["spec"].get("serviceAccountName") or "default",
            )
            choice = (account or {}).get("automountServiceAccountToken")
        return choice is not False

    def _service_account_dir(self, pod: Object) -> Path:
        """The token, CA and namespace files a pod finds at ``SERVICE_ACCOUNT_PATH``."""
        account_name = pod["spec"].get("serviceAccountName") or "default"
        account = ServiceAccount(pod["metadata"]["namespace"], account_name)
        directory = self._instance_dir(pod) / "serviceaccount"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "token").write_text(self.api.authorizer.issue(account))
        (directory / "ca.crt").write_bytes(self.api.ca.read_bytes())
        (directory / "namespace").write_text(account.namespace)
        return directory

    def _mounts(self, pod: Object, container: Object) -> list[Mount]:
        """The container's volumeMounts, each a directory of this machine."""
        namespace = pod["metadata"]["namespace"]
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes") or []}
        instance_dir = self._instance_dir(pod)
        mounts = []
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"])
            if volume is None:
                raise ContainerConfigError(f'volume "{mount["name"]}" is not in the pod')
            read_only = bool(mount.get("readOnly"))
            if "persistentVolumeClaim" in volume:
                source = self.volume_dir(namespace, volume["persistentVolumeClaim"]["claimName"])
            elif "configMap" in volume or "secret" in volume:
                source = instance_dir / "volumes" / mount["name"]
                self._write_key_files(namespace, volume, source)
                read_only = True
            else:  # emptyDir and anything else: a directory of this pod only
                source = instance_dir / "volumes" / mount["name"]
                source.mkdir(parents=True, exist_ok=True)
                source.chmod(0o777)  # as a kubelet makes an emptyDir: any user may write
            if mount.get("subPath"):
                source = source / mount["subPath"]
            source.mkdir(parents=True, exist_ok=True)
            mounts.append(Mount(source, mount["mountPath"], read_only))
        return mounts

    def _write_key_files(self, namespace: str, volume: Object, directory: Path) -> None:
        """A configMap or secret volume's files, from the object as it is now."""
        kind = "configMap" if "configMap" in volume else "secret"
        source = volume[kind]
        ref_key = "configMapRef" if kind == "configMap" else "secretRef"
        name = source.get("name") or source.get("secretName")
        optional = bool(source.get("optional", False))
        data = self._source_data(namespace, {ref_key: {"name": name, "optional": optional}})
        items = source.get("items") or [{"key": key, "path": key} for key in sorted(data)]
        directory.mkdir(parents=True, exist_ok=True)
        for item in items:
            if item["key"] not in data:
                if optional:
                    continue
                raise ContainerConfigError(f'key "{item["key"]}" not in {kind} {name}')
            path = directory / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            path.write_text(data[item["key"]])
            path.chmod(item.get("mode", source.get("defaultMode", _DEFAULT_MODE)))


class PodInstance:
    """One Pod object's container process, restarted when it exits, until stopped."""

    def __init__(self, runner: PodRunner, pod: Object) -> None:
        self.runner = runner
        self.pod = pod
        meta = pod["metadata"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.ip = runner.pod_ip(self.namespace, self.name)
        self.stopping = False
        self.process: asyncio.subprocess.Process | None = None
        self.running: Container | None = None
        """The container ``process`` runs."""
        self.restarts = 0
        self.ready = False
        self.state: Object = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: Object = {}
        self.started_at = now()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    @property
    def container(self) -> Object:
        return self.pod["spec"]["containers"][0]

    def report(self) -> None:
        running = "running" in self.state
        condition = "True" if self.ready else "False"
        phase = "Running" if running or self.restarts else "Pending"
        status = {
            "phase": phase,
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "hostIP": "127.0.0.1",
            "startTime": self.started_at,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": condition},
                {"type": "Ready", "status": condition},
            ],
            "containerStatuses": [
                {
                    "name": self.container.get("name", "main"),
                    "image": self.container.get("image", ""),
                    "imageID": "",
                    "ready": self.ready,
                    "started": running,
                    "restartCount": self.restarts,
                    "state": self.state,
                    "lastState": self.last_state,
                }
            ],
        }
        self.runner.write_pod_status(self.namespace, self.name, self.uid, status)

    async def _supervise(self) -> None:
        log_path = self.runner.log_path(self.namespace, self.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.report()
        while not self.stopping:
            try:
                container = self.runner.container_of(self._with_addresses(), self.restarts + 1)
                argv, env = self.runner.runtime.launch(container)
            except ContainerConfigError as error:
                self.state = {
                    "waiting": {"reason": "CreateContainerConfigError", "message": str(error)}
                }
                self.report()
                await asyncio.sleep(1.0)
                continue
            with log_path.open("ab") as log:
                log.write(f"--- start {self.restarts + 1} of {self.name} ({self.ip})\n".encode())
                log.flush()
                self.process = await asyncio.create_subprocess_exec(
                    *argv,
                    env=env,
                    cwd=self.runner.root,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                    preexec_fn=local._die_with_parent,
                )
            self.running = container
            self.state = {"running": {"startedAt": now()}}
            self.report()
            probe = asyncio.get_running_loop().create_task(self._probe())
            code = await self.process.wait()
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
            self.ready = False
            if self.stopping:
                break
            self.restarts += 1
            self.last_state = {"terminated": {"exitCode": code, "finishedAt": now()}}
            self.state = {"waiting": {"reason": "CrashLoopBackOff"}}
            self.report()
            with log_path.open("ab") as log:
                log.write(f"--- {self.name} exited with {code}; restarting\n".encode())
            backoff = RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S)) - 1]
            await asyncio.sleep(backoff)

    def _with_addresses(self) -> Object:
        """The pod as its fieldRefs see it: with the addresses of its status."""
        pod = json.loads(json.dumps(self.pod))
        pod["status"] = {"podIP": self.ip, "podIPs": [{"ip": self.ip}], "hostIP": "127.0.0.1"}
        return pod

    async def _probe(self) -> None:
        probe = self.container.get("readinessProbe")
        if probe is None or "httpGet" not in probe:
            self.ready = True
            self.report()
            return
        http = probe["httpGet"]
        port = self._port(http.get("port"))
        period = min(float(probe.get("periodSeconds", 10)), PROBE_PERIOD_MAX_S)
        failures_allowed = int(probe.get("failureThreshold", 3))
        failures = 0
        await asyncio.sleep(min(float(probe.get("initialDelaySeconds", 0)), PROBE_PERIOD_MAX_S))
        while True:
            ok = await http_ok(self.ip, port, http.get("path", "/"), probe.get("timeoutSeconds", 1))
            failures = 0 if ok else failures + 1
            ready = ok or (self.ready and failures < failures_allowed)
            if ready != self.ready:
                self.ready = ready
                self.report()
            await asyncio.sleep(period)

    def _port(self, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for declared in self.container.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
        raise ContainerConfigError(f"no container port named {port!r}")

    async def stop(self) -> None:
        """SIGTERM, the grace period (capped), then SIGKILL; the supervisor ends."""
        self.stopping = True
        grace = min(float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)), MAX_GRACE_S)
        process, container, runtime = self.process, self.running, self.runner.runtime
        if process is not None and container is not None and process.returncode is None:
            await runtime.signal(container, process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                await runtime.signal(container, process.pid, signal.SIGKILL)
                await process.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def http_ok(host: str, port: int, path: str, timeout: float) -> bool:
    """A bare HTTP/1.0 GET: true for a 2xx or 3xx answer within ``timeout``."""
    try:
        async with asyncio.timeout(float(timeout)):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False
    parts = status_line.split()
    return len(parts) >= 2 and parts[1][:1] in (b"2", b"3")

"""A Kubernetes cluster emulated on this machine, for testing the operator without Docker.

Fixtures (``tests/integration/conftest.py``):

- ``kube`` → :class:`~.harness.Kube`: an API server over real HTTP with the CRDs of
  ``crds/`` registered (``kube.url``, ``kube.kubeconfig`` for any client), the pod runner
  and the Service names and addresses. Everything stops at teardown, bounded in time.
- ``operator_process`` → :class:`~.operator.OperatorProcess`: ``brook-operator`` running
  against ``kube`` (cluster-wide, short status interval; log in ``kube.root``).

A test that applies a Broker and waits for it::

    def test_broker_becomes_ready(kube: Kube, operator_process: OperatorProcess) -> None:
        kube.apply({"apiVersion": "brook.dev/v1alpha1", "kind": "Broker",
                    "metadata": {"name": "demo"}, "spec": {"replicas": 3}})
        broker = kube.wait_for(
            lambda: ready(kube.get("brook.dev/v1alpha1/brokers", "demo")), timeout=90
        )
        bootstrap = broker["status"]["bootstrap"]  # demo.default.svc.cluster.local:9092

``kube.get/find/list/create/apply/patch/delete`` act on the store directly (resources
named ``"v1/pods"``, ``"apps/v1/statefulsets"``, ``"brook.dev/v1alpha1/topics"``);
``kube.wait_for(fn)`` polls until ``fn()`` is true and fails with every pod's state and
log tail; ``kube.wait_ready_pods(selector, count)``; ``kube.pod_log(name)``;
``kube.runner.volume_dir(ns, claim)`` is a PVC's directory on this machine.

What runs where:

- :mod:`.store`: objects and their rules (server-set metadata, status subresource,
  generation, patches, selectors, finalizers, owner-reference garbage collection, CRD
  defaults and schema validation, cluster IPs).
- :mod:`.apiserver`: kmock's Kubernetes scaffold (HTTP, discovery from its bundled
  resource list, Status errors) serving the store: 201 on create, 422 on a failed
  json-patch test, 409 on conflicts, PUT, ``/status`` and ``/scale``, watches that resume
  from a resourceVersion (410 when too old), end at ``timeoutSeconds`` and send BOOKMARKs;
  pods reach it over TLS.
- :mod:`.rbac`: pods' ServiceAccount tokens, allowed what their (Cluster)RoleBindings
  grant; any other token (the operator's, the tests') is the cluster admin's.
- :mod:`.pods`: StatefulSet and Deployment controllers and a kubelet running each pod's
  container with its own 127.N.X.Y address (N differs between test
  runs that overlap), its volumes bind-mounted in a private mount namespace, and, as a
  kubelet gives it, its ServiceAccount token and the API server's address.
- :mod:`.runtimes`: how the kubelet runs a container: a local process (default, fast), or
  in image mode (``Kube(runtime=ImageRuntime(...))``) the container's image with podman or
  docker: host network and the pod's own 127.x address, volumes, the manifest's user,
  read-only root and ``fsGroup``, the ServiceAccount mount.
- :mod:`.chart`: in image mode, the operator installed by its Helm chart, its pod run from
  the operator image with the chart's RBAC (``operated_broker(..., images=...)``).
- :mod:`.dns`: names in a marked block of ``/etc/hosts`` and a TCP proxy per cluster IP.

Not emulated: admission webhooks, RBAC for the operator run as a process (its requests are
all allowed; from its chart, its ServiceAccount has the chart's RBAC),
CEL validation rules (``x-kubernetes-validations``), liveness probes, ReplicaSets (a
Deployment owns its pods), several containers or init containers per pod.
Requires root (mount namespaces, ``/etc/hosts``).
"""

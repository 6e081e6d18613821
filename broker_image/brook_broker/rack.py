"""A broker's rack from the labels of the Kubernetes node it runs on.

The operator gives a rack-aware broker pod ``NODE_NAME`` (the pod's node) and
``BROOK_RACK_TOPOLOGY_KEY`` (the node label naming its zone); the broker reads that
label once, at start, from the API server with the pod's service account (which needs
``get`` on ``nodes``). An explicit ``--rack`` / ``BROOK_RACK`` wins.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class RackLookupError(RuntimeError):
    """The node's rack label could not be read."""


def node_rack(environ: Mapping[str, str], service_account: Path = SERVICE_ACCOUNT) -> str | None:
    """The node's value of the topology label, or None when rack lookup is not asked for."""
    node, key = environ.get("NODE_NAME"), environ.get("BROOK_RACK_TOPOLOGY_KEY")
    if not node or not key:
        return None
    host = environ.get("KUBERNETES_SERVICE_HOST")
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise RackLookupError("KUBERNETES_SERVICE_HOST is not set: not running in a pod")
    url = f"https://{host}:{port}/api/v1/nodes/{urllib.parse.quote(node)}"
    try:
        token = (service_account / "token").read_text().strip()
        context = ssl.create_default_context(cafile=str(service_account / "ca.crt"))
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            labels = json.load(response).get("metadata", {}).get("labels") or {}
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise RackLookupError(
                f"cannot read node {node}: {error.code} {error.reason}; the pod's "
                "ServiceAccount needs get on nodes (the operator binds it to its rack "
                "ClusterRole)"
            ) from error
        raise RackLookupError(f"cannot read node {node}: {error}") from error
    except (OSError, ValueError) as error:
        raise RackLookupError(f"cannot read node {node}: {error}") from error
    rack = labels.get(key)
    if not rack:
        raise RackLookupError(f"node {node} has no label {key}")
    return str(rack)

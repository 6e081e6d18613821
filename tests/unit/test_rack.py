"""A broker's rack from its node's labels, read over TLS from an API server as a pod
reads it: the service account's token and CA, the node name from the downward API."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from brook_broker.rack import RackLookupError, node_rack
from brook_operator.broker_resources import BrokerSpec, container_env

from tests.support.tls import issue

TOKEN = "token-of-the-pod"
ZONE_KEY = "topology.kubernetes.io/zone"


class NodeApi(BaseHTTPRequestHandler):
    """GET /api/v1/nodes/NAME for the nodes below, to the pod's token only."""

    nodes: ClassVar[dict[str, dict[str, str]]] = {
        "node-a": {ZONE_KEY: "zone-a", "kubernetes.io/hostname": "node-a"},
        "node-bare": {"kubernetes.io/hostname": "node-bare"},
    }
    forbidden: ClassVar[set[str]] = {"node-secret"}

    def do_GET(self) -> None:
        name = self.path.removeprefix("/api/v1/nodes/")
        if self.headers.get("Authorization") != f"Bearer {TOKEN}" or name in self.forbidden:
            self._answer(403, {"kind": "Status", "reason": "Forbidden"})
        elif name in self.nodes:
            metadata = {"name": name, "labels": self.nodes[name]}
            self._answer(200, {"kind": "Node", "metadata": metadata})
        else:
            self._answer(404, {"kind": "Status", "reason": "NotFound"})

    def _answer(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """A rack-aware pod's environment and service account directory, with an API server."""
    certificate = issue(tmp_path / "tls", ["127.0.0.1"])
    server = ThreadingHTTPServer(("127.0.0.1", 0), NodeApi)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate.certificate, certificate.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(TOKEN + "\n")
    (account / "ca.crt").write_bytes(certificate.ca.read_bytes())
    spec = BrokerSpec.parse({"rack": {"enabled": True}}, "brook-broker")
    environ = {item["name"]: item.get("value", "") for item in container_env("k", "ns", spec)}
    environ |= {
        "NODE_NAME": "node-a",
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(server.server_address[1]),
    }
    try:
        yield environ, account
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_the_rack_is_the_zone_label_of_the_pods_node(pod: tuple[dict[str, str], Path]) -> None:
    environ, account = pod
    assert node_rack(environ, account) == "zone-a"


def test_a_pod_without_rack_awareness_reads_nothing() -> None:
    spec = BrokerSpec.parse({}, "brook-broker")
    environ = {item["name"]: item.get("value", "") for item in container_env("k", "ns", spec)}
    assert node_rack(environ) is None


@pytest.mark.parametrize(
    ("node", "complaint"),
    [
        ("node-bare", "node node-bare has no label topology.kubernetes.io/zone"),
        ("node-secret", "403 Forbidden; the pod's ServiceAccount needs get on nodes"),
        ("node-gone", "cannot read node node-gone: HTTP Error 404"),
    ],
)
def test_a_rack_that_cannot_be_read_says_why(
    pod: tuple[dict[str, str], Path], node: str, complaint: str
) -> None:
    environ, account = pod
    with pytest.raises(RackLookupError, match=complaint):
        node_rack({**environ, "NODE_NAME": node}, account)


def test_an_api_server_the_pod_does_not_trust_is_refused(
    pod: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    environ, account = pod
    (account / "ca.crt").write_bytes(issue(tmp_path / "other", ["127.0.0.1"]).ca.read_bytes())
    with pytest.raises(RackLookupError, match="CERTIFICATE_VERIFY_FAILED"):
        node_rack(environ, account)


def test_outside_a_pod_the_lookup_says_so() -> None:
    with pytest.raises(RackLookupError, match="not running in a pod"):
        node_rack({"NODE_NAME": "node-a", "BROOK_RACK_TOPOLOGY_KEY": ZONE_KEY})

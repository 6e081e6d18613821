"""``brook local up --brokers 3``: each broker listed in cluster.json is a running broker
with that node id, reachable at the listed addresses, and all of them form one cluster."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from .brokers import KafkaConnection
from .cluster import describe
from .test_local_up import LocalCluster


def test_three_brokers_are_listed_with_their_node_ids_pids_and_addresses(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "local", "--brokers", "3")
    try:
        addresses = [f"127.0.0.1:{cluster.port + index}" for index in range(3)]
        assert cluster.bootstrap_line() == f"bootstrap: {','.join(addresses)}\n"
        description = json.loads((cluster.data_dir / "cluster.json").read_text())
        assert description["bootstrap"] == ",".join(addresses)
        for node_id, broker in enumerate(description["brokers"]):
            assert broker["node_id"] == node_id
            command = Path(f"/proc/{broker['pid']}/cmdline").read_bytes().split(b"\0")
            assert b"brook_broker" in command
            assert command[command.index(b"--node-id") + 1] == str(node_id).encode()
            with urllib.request.urlopen(f"http://{broker['http']}/readyz", timeout=5) as ready:
                assert ready.status == 200
            host, port = broker["kafka"].rsplit(":", 1)
            with KafkaConnection((host, int(port))) as connection:
                view = describe(connection, node_id, [])
            assert view.brokers == {0, 1, 2}
            assert view.controller_id in {0, 1, 2}
    finally:
        assert cluster.stop() == 0

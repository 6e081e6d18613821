"""``brook local up`` as a user runs it: three brokers by default, one bootstrap line on
stdout, real clients work, SIGTERM stops everything and exits 0, a broker that dies takes
the CLI down with it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from brook_cli.local import CONTROLLER_PORT_OFFSET, HTTP_PORT_OFFSET

from .brokers import free_cluster_port

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


BROKERS = 3


def local_up(data_dir: Path, port: int, *extra: str) -> list[str]:
    """The command line of ``brook local up``."""
    return [
        sys.executable, "-m", "brook_cli", "local", "up",
        "--data-dir", str(data_dir), "--port", str(port), *extra,
    ]  # fmt: skip


class LocalCluster:
    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.port = free_cluster_port(BROKERS)
        self.process = subprocess.Popen(
            local_up(data_dir, self.port, *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    def bootstrap_line(self) -> str:
        assert self.process.stdout is not None
        os.set_blocking(self.process.stdout.fileno(), False)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            line = self.process.stdout.readline()
            if line:
                return line
            time.sleep(0.05)
        raise AssertionError(f"no bootstrap line; stderr:\n{self.stderr()}")

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def stderr(self) -> str:
        if self.process.poll() is None:
            self.stop()
        assert self.process.stderr is not None
        return self.process.stderr.read()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    running = LocalCluster(tmp_path / "local")
    yield running
    running.stop()


def test_serves_clients_and_stops_cleanly_on_sigterm(cluster: LocalCluster) -> None:
    addresses = [f"127.0.0.1:{cluster.port + index}" for index in range(BROKERS)]
    assert cluster.bootstrap_line() == f"bootstrap: {','.join(addresses)}\n"
    description = json.loads((cluster.data_dir / "cluster.json").read_text())
    brokers = description["brokers"]
    assert [broker["node_id"] for broker in brokers] == list(range(BROKERS))
    for index, broker in enumerate(brokers):
        assert broker["kafka"] == addresses[index]
        assert broker["http"] == f"127.0.0.1:{cluster.port + index + HTTP_PORT_OFFSET}"
        assert broker["controller"] == f"127.0.0.1:{cluster.port + index + CONTROLLER_PORT_OFFSET}"
    if shutil.which("kcat"):
        bootstrap = description["bootstrap"]
        subprocess.run(
            ["kcat", "-b", bootstrap, "-t", "greetings", "-P", "-K:"],
            input=b"k1:hello\nk2:brook\n",
            check=True,
            timeout=30,
        )
        consumed = subprocess.run(
            [
                "kcat",
                "-b",
                bootstrap,
                "-t",
                "greetings",
                "-C",
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%o %k %s\\n",
            ],
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        assert consumed == b"0 k1 hello\n1 k2 brook\n"
    assert cluster.stop(signal.SIGTERM) == 0
    assert not (cluster.data_dir / "cluster.json").exists()
    for broker in brokers:
        with pytest.raises(ProcessLookupError):
            os.kill(broker["pid"], 0)
    assert cluster.process.stdout is not None
    assert cluster.process.stdout.read() == "", "only the bootstrap line goes to stdout"


def test_ctrl_c_stops_the_cluster(cluster: LocalCluster) -> None:
    cluster.bootstrap_line()
    brokers = json.loads((cluster.data_dir / "cluster.json").read_text())["brokers"]
    assert cluster.stop(signal.SIGINT) == 0
    for broker in brokers:
        with pytest.raises(ProcessLookupError):
            os.kill(broker["pid"], 0)


def test_a_broker_that_dies_stops_the_cli_with_an_error(cluster: LocalCluster) -> None:
    cluster.bootstrap_line()
    pid = json.loads((cluster.data_dir / "cluster.json").read_text())["brokers"][1]["pid"]
    os.kill(pid, signal.SIGKILL)
    assert cluster.process.wait(timeout=STOP_TIMEOUT_S) == 1
    assert "broker 1 was killed by SIGKILL" in cluster.stderr()


def test_a_taken_port_is_reported(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.bootstrap_line()
    second = subprocess.run(
        local_up(tmp_path / "other", cluster.port),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )
    assert second.returncode == 1
    assert second.stdout == ""
    assert f"already in use: 127.0.0.1:{cluster.port}" in second.stderr

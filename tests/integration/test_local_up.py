"""``brook local up`` as a user runs it: one bootstrap line on stdout, real clients work,
SIGTERM stops everything and exits 0, a broker that dies takes the CLI down with it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from brook_cli.local import HTTP_PORT_OFFSET

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


def free_port_pair() -> int:
    """A port whose +HTTP_PORT_OFFSET neighbour is free too."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + HTTP_PORT_OFFSET > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + HTTP_PORT_OFFSET))
            except OSError:
                continue
        return int(port)
    raise RuntimeError("no free pair of ports")


class LocalCluster:
    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.port = free_port_pair()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "brook_cli",
                "local",
                "up",
                "--data-dir",
                str(data_dir),
                "--port",
                str(self.port),
                *extra,
            ],
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
    assert cluster.bootstrap_line() == f"bootstrap: 127.0.0.1:{cluster.port}\n"
    description = json.loads((cluster.data_dir / "cluster.json").read_text())
    (broker,) = description["brokers"]
    assert broker["kafka"] == f"127.0.0.1:{cluster.port}"
    assert broker["http"] == f"127.0.0.1:{cluster.port + HTTP_PORT_OFFSET}"
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
    with pytest.raises(ProcessLookupError):
        os.kill(broker["pid"], 0)
    assert cluster.process.stdout is not None
    assert cluster.process.stdout.read() == "", "only the bootstrap line goes to stdout"


def test_ctrl_c_stops_the_cluster(cluster: LocalCluster) -> None:
    cluster.bootstrap_line()
    pid = json.loads((cluster.data_dir / "cluster.json").read_text())["brokers"][0]["pid"]
    assert cluster.stop(signal.SIGINT) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_broker_that_dies_stops_the_cli_with_an_error(cluster: LocalCluster) -> None:
    cluster.bootstrap_line()
    pid = json.loads((cluster.data_dir / "cluster.json").read_text())["brokers"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    assert cluster.process.wait(timeout=STOP_TIMEOUT_S) == 1
    assert "broker 0 was killed by SIGKILL" in cluster.stderr()


def test_a_taken_port_is_reported(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.bootstrap_line()
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "brook_cli",
            "local",
            "up",
            "--data-dir",
            str(tmp_path / "other"),
            "--port",
            str(cluster.port),
        ],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )
    assert second.returncode == 1
    assert second.stdout == ""
    assert f"already in use: 127.0.0.1:{cluster.port}" in second.stderr

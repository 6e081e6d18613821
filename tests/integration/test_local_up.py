"""``brook local up`` as a user runs it: three brokers by default, one bootstrap line on
stdout, real clients work, SIGTERM stops everything and exits 0. A broker killed with
``kill -9`` is restarted while the others keep serving an idempotent acks=all producer,
is back in every ISR within 15 s, and nothing acknowledged is lost; Ctrl-C during its
back-off still stops everything; one that cannot come back is given up; with
--no-restart it stays down and the others serve on; a broker that cannot start at all
fails the command."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from brook_cli.local import CONTROLLER_PORT_OFFSET, HTTP_PORT_OFFSET, INTERNAL_PORT_OFFSET

from .brokers import KafkaConnection, free_cluster_port, wait_until
from .clients import create_topic
from .cluster import (
    ClusterView,
    SequenceProducer,
    check_acknowledged,
    describe,
    read_back,
    sequence_value,
)

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
    """``brook local up`` as a process. Its stderr (with the brokers' log lines) goes to a
    file next to ``data_dir``: a pipe nobody reads would block the brokers once full."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.port = free_cluster_port(BROKERS)
        self.stderr_path = data_dir.with_name(f"{data_dir.name}.stderr")
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                local_up(data_dir, self.port, *extra),
                stdout=subprocess.PIPE,
                stderr=stderr,
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
        """What the CLI and its brokers wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def description(self) -> dict[str, Any]:
        """cluster.json as the CLI last wrote it."""
        description: dict[str, Any] = json.loads((self.data_dir / "cluster.json").read_text())
        return description

    def pid(self, node_id: int) -> int | None:
        pid: int | None = self.description()["brokers"][node_id]["pid"]
        return pid

    def kill9(self, node_id: int) -> int:
        """``kill -9`` a broker by its pid from cluster.json; returns that pid."""
        pid = self.pid(node_id)
        assert pid is not None, f"broker {node_id} is down"
        os.kill(pid, signal.SIGKILL)
        return pid

    def view(self, node_id: int, *topics: str) -> ClusterView:
        """Metadata (leaders, ISR) as broker ``node_id`` sees the cluster."""
        with KafkaConnection(("127.0.0.1", self.port + node_id), timeout=5.0) as connection:
            return describe(connection, node_id, topics)


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
        assert broker["internal"] == f"127.0.0.1:{cluster.port + index + INTERNAL_PORT_OFFSET}"
    # The brokers share a secret that only the user can read, and that no process listing
    # shows: each broker is given its file.
    secret_file = cluster.data_dir / "cluster.secret"
    secret = secret_file.read_text()
    assert secret and secret_file.stat().st_mode & 0o777 == 0o600
    for broker in brokers:
        command_line = Path(f"/proc/{broker['pid']}/cmdline").read_bytes().split(b"\0")
        assert secret.encode() not in b" ".join(command_line)
        assert command_line[command_line.index(b"--cluster-secret-file") + 1] == bytes(secret_file)
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
    assert secret_file.read_text() == secret, "kept for the next run of this data root"
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


def test_ctrl_c_while_a_broker_waits_to_restart_stops_the_others(cluster: LocalCluster) -> None:
    cluster.bootstrap_line()
    pids = [cluster.kill9(2), cluster.pid(0), cluster.pid(1)]
    wait_until(
        lambda: "broker 2 was killed by SIGKILL; restarting it in 1 s" in cluster.stderr(),
        10,
        interval=0.02,
        message="the death reported",
    )
    assert cluster.stop(signal.SIGINT) == 0
    assert "broker 2 restarted" not in cluster.stderr()
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


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


def test_a_second_local_up_on_the_same_data_root_is_refused(tmp_path: Path) -> None:
    """Also while the first is still starting (no cluster.json yet) and on other ports:
    two clusters on one data root would write the same logs."""
    data_dir = tmp_path / "local"
    first = LocalCluster(data_dir)
    try:
        wait_until(lambda: (data_dir / "broker-0").exists(), START_TIMEOUT_S, interval=0.01)
        second = subprocess.run(
            local_up(data_dir, free_cluster_port(BROKERS)),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
        assert second.returncode == 1, second.stderr
        assert second.stdout == ""
        assert f"another 'brook local up' runs from {data_dir}" in second.stderr
        assert first.bootstrap_line().startswith(f"bootstrap: 127.0.0.1:{first.port},")
    finally:
        assert first.stop() == 0


def test_a_broker_that_cannot_start_fails_the_command(tmp_path: Path) -> None:
    result = subprocess.run(
        local_up(tmp_path / "local", free_cluster_port(1), "--brokers", "1", "--", "--no-such"),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "broker 0 exited with code 2 before it was ready; stopping the cluster" in result.stderr


def test_a_broker_restarted_after_its_secret_file_was_removed_rejoins(
    cluster: LocalCluster,
) -> None:
    """The restarted broker gets the secret the others run with, not a new one that would
    lock it out of the quorum and the internal listeners for good."""
    cluster.bootstrap_line()
    secret_file = cluster.data_dir / "cluster.secret"
    secret = secret_file.read_text()
    secret_file.unlink()
    killed = cluster.kill9(1)
    wait_until(
        lambda: cluster.pid(1) not in (None, killed) and ready(cluster, 1),
        20,
        message=f"broker 1 back and ready; stderr:\n{cluster.stderr()}",
    )
    assert secret_file.read_text() == secret
    assert secret_file.stat().st_mode & 0o777 == 0o600


def ready(cluster: LocalCluster, node_id: int) -> bool:
    """``serves``, and False while the broker does not answer at all."""
    try:
        return serves(cluster, node_id)
    except OSError:
        return False


def serves(cluster: LocalCluster, node_id: int) -> bool:
    url = f"http://127.0.0.1:{cluster.port + node_id + HTTP_PORT_OFFSET}/readyz"
    with urllib.request.urlopen(url, timeout=5) as ready:
        return bool(ready.status == 200)


def test_no_restart_leaves_a_killed_broker_down_and_the_others_serving(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "local", "--no-restart")
    try:
        cluster.bootstrap_line()
        victim = (cluster.view(0).controller_id + 1) % BROKERS
        others = [node for node in range(BROKERS) if node != victim]
        cluster.kill9(victim)
        wait_until(lambda: cluster.pid(victim) is None, 10, message="cluster.json: broker down")
        assert f"broker {victim} was killed by SIGKILL; not restarting it (--no-restart)" in (
            cluster.stderr()
        )
        create_topic(cluster.description()["bootstrap"], "after-the-kill", replication_factor=2)
        time.sleep(2)
        assert cluster.process.poll() is None, f"local up ended:\n{cluster.stderr()}"
        assert all(serves(cluster, node) for node in others)
        assert cluster.pid(victim) is None
    finally:
        assert cluster.stop() == 0


# --- kill -9 under an idempotent acks=all producer -----------------------------------------

TOPIC = "supervised"
PARTITIONS = 3
RECORDS_PER_SECOND = 500
BACK_IN_ISR_S = 15.0
IDEMPOTENT = {"enable.idempotence": True, "max.in.flight.requests.per.connection": 5}


@dataclass(frozen=True)
class Recovery:
    """One ``kill -9`` of a broker of ``brook local up`` and how the cluster took it."""

    broker: int
    controller: bool
    """Whether it was the active controller when it was killed."""
    led: tuple[int, ...]
    """The partitions it led when it was killed."""
    back_in_isr_s: float
    """From the kill until Metadata listed it in every ISR again."""
    acks_while_out: int
    """Records acknowledged while it was out of some ISR."""
    new_pid: int


def partitions_led(view: ClusterView, node_id: int) -> tuple[int, ...]:
    return tuple(sorted(index for index, p in view.topics[TOPIC].items() if p.leader == node_id))


def in_every_isr(view: ClusterView, node_id: int) -> bool:
    partitions = view.topics.get(TOPIC, {})
    return len(partitions) == PARTITIONS and all(
        p.leader >= 0 and node_id in p.isr for p in partitions.values()
    )


def kill_and_wait_for_isr(
    cluster: LocalCluster, victim: int, producer: SequenceProducer
) -> Recovery:
    """kill -9 ``victim`` by its pid from cluster.json, then ask a surviving broker for the
    ISR until it names ``victim`` in every partition again (having seen it leave)."""
    witness = next(node for node in range(BROKERS) if node != victim)
    before = cluster.view(witness, TOPIC)
    old_pid = cluster.kill9(victim)
    killed_at = time.monotonic()
    acks_when_out: int | None = None
    last: ClusterView | OSError | None = None
    while True:
        elapsed = time.monotonic() - killed_at
        assert elapsed < BACK_IN_ISR_S, (
            f"broker {victim} not back in every ISR {BACK_IN_ISR_S:g} s after kill -9 "
            f"(seen out of an ISR: {acks_when_out is not None}); last Metadata: {last}"
        )
        try:
            last = cluster.view(witness, TOPIC)
        except OSError as error:
            last = error
        else:
            back = in_every_isr(last, victim)
            if not back and acks_when_out is None:
                acks_when_out = len(producer.acked)
            if back and acks_when_out is not None:
                break
        time.sleep(0.05)
    new_pid = cluster.pid(victim)
    assert new_pid is not None and new_pid != old_pid
    assert b"brook_broker" in Path(f"/proc/{new_pid}/cmdline").read_bytes()
    return Recovery(
        victim,
        victim == before.controller_id,
        partitions_led(before, victim),
        elapsed,
        len(producer.acked) - acks_when_out,
        new_pid,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_broker_is_restarted_and_nothing_acknowledged_is_lost(
    cluster: LocalCluster,
) -> None:
    cluster.bootstrap_line()
    bootstrap = cluster.description()["bootstrap"]
    create_topic(bootstrap, TOPIC, PARTITIONS, {"min.insync.replicas": "2"}, replication_factor=3)
    wait_until(
        lambda: all(in_every_isr(cluster.view(0, TOPIC), node) for node in range(BROKERS)),
        30,
        message=f"every replica of {TOPIC} in the ISR",
    )
    producer = SequenceProducer(bootstrap, TOPIC, range(PARTITIONS), IDEMPOTENT)
    producer.run_in_background(per_second=RECORDS_PER_SECOND)
    try:
        wait_until(lambda: len(producer.acked) >= RECORDS_PER_SECOND, 30, message="first acks")
        view = cluster.view(0, TOPIC)
        # First a broker that is not the active controller; then, once it is back, the
        # broker that leads the most partitions among the others.
        follower = next(
            node
            for node in range(BROKERS)
            if node != view.controller_id and partitions_led(view, node)
        )
        recoveries = [kill_and_wait_for_isr(cluster, follower, producer)]
        view = cluster.view(follower, TOPIC)
        leader = max(
            (node for node in range(BROKERS) if node != follower),
            key=lambda node: len(partitions_led(view, node)),
        )
        recoveries.append(kill_and_wait_for_isr(cluster, leader, producer))
        time.sleep(1)
    finally:
        with contextlib.suppress(AssertionError):
            producer.stop(timeout=60)
    for recovery in recoveries:
        print(f"local up: {recovery}")
        assert recovery.led, f"broker {recovery.broker} led no partition when killed"
        assert recovery.acks_while_out > 0, f"no acks while broker {recovery.broker} was out"
    failed = sorted(producer.failed.items())[:5]
    assert not producer.failed, f"{len(producer.failed)} records failed, e.g. {failed}"
    log = read_back(bootstrap, TOPIC, range(PARTITIONS))
    assert check_acknowledged(producer.acked, log) == (0, 0)
    assert sum(map(len, log.values())) == len(producer.acked) == producer.sent
    stderr = cluster.stderr()
    for recovery in recoveries:
        assert f"broker {recovery.broker} was killed by SIGKILL; restarting it in 1 s" in stderr
        assert f"broker {recovery.broker} restarted (pid {recovery.new_pid})" in stderr
    assert cluster.stop() == 0, stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_record_acknowledged_just_before_every_broker_is_killed_is_kept(
    cluster: LocalCluster,
) -> None:
    """The topic was created moments before the kill, so the commit index the restarted
    brokers had persisted is older than its creation: they must not take the new topic's
    log for one of a deleted topic and remove it."""
    bootstrap = cluster.bootstrap_line().removeprefix("bootstrap: ").strip()
    delivered: list[tuple[int, int]] = []
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.list_topics(timeout=10)  # connected, so the kill follows the creation closely
    create_topic(bootstrap, "just-made")
    producer.produce(
        "just-made",
        sequence_value(7),
        on_delivery=lambda error, message: (
            delivered.append((message.partition(), message.offset())) if error is None else None
        ),
    )
    assert producer.flush(20) == 0 and delivered == [(0, 0)]
    killed = [cluster.kill9(node) for node in range(BROKERS)]
    wait_until(
        lambda: all(
            cluster.pid(node) not in (None, killed[node]) and ready(cluster, node)
            for node in range(BROKERS)
        ),
        40,
        message=f"every broker back; stderr:\n{cluster.stderr()}",
    )
    assert read_back(bootstrap, "just-made", [0], timeout=30) == {0: [(0, 7)]}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_broker_that_cannot_come_back_is_given_up(tmp_path: Path) -> None:
    """kill -9 the only broker and hold its HTTP port: every restart fails to bind, the
    back-off grows, the broker is given up, and with none left the command fails."""
    cluster = LocalCluster(tmp_path / "local", "--brokers", "1")
    try:
        cluster.bootstrap_line()
        cluster.kill9(0)
        with wait_until(
            lambda: squat(("127.0.0.1", cluster.port + HTTP_PORT_OFFSET)), 5, interval=0.01
        ):
            assert cluster.process.wait(timeout=60) == 1
    finally:
        cluster.stop()
    stderr = cluster.stderr()
    waits = [1, 2, 4, 8, 8]
    assert "broker 0 was killed by SIGKILL; restarting it in 1 s" in stderr
    for wait in waits[1:]:
        assert f"broker 0 exited with code 1; restarting it in {wait} s" in stderr
    assert (
        "broker 0 exited with code 1; it died 6 times in a row, each within 10 s of starting: "
        "giving up on it" in stderr
    )
    assert "no broker is left running; stopping the cluster" in stderr


def squat(address: tuple[str, int]) -> socket.socket | None:
    """A listening socket on ``address``, or None while it is still taken."""
    try:
        return socket.create_server(address)
    except OSError:
        return None

"""``brook local up`` argument handling and cluster planning; no processes are started."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from brook_cli.local import (
    CONTROLLER_PORT_OFFSET,
    HTTP_PORT_OFFSET,
    INTERNAL_PORT_OFFSET,
    BrokerProcess,
    BrokerSpec,
    bootstrap_servers,
    describe_exit,
    ensure_cluster_secret,
    format_address,
    plan_cluster,
    running_broker_pids,
    stop_all,
)
from brook_cli.main import parse_arguments


def test_local_up_defaults() -> None:
    options, specs = parse_arguments(["local", "up"])
    assert options.data_dir == Path(".brook-local")
    assert options.ready_timeout > 0 and options.stop_timeout > 0
    quorum = "0@127.0.0.1:11092,1@127.0.0.1:11093,2@127.0.0.1:11094"
    assert specs == [
        BrokerSpec(
            node_id=index,
            data_dir=Path(f".brook-local/broker-{index}"),
            host="127.0.0.1",
            kafka_port=9092 + index,
            http_port=9092 + index + HTTP_PORT_OFFSET,
            controller_port=9092 + index + CONTROLLER_PORT_OFFSET,
            controller_quorum=quorum,
            internal_port=9092 + index + INTERNAL_PORT_OFFSET,
            cluster_secret_file=Path(".brook-local/cluster.secret"),
        )
        for index in range(3)
    ]
    assert bootstrap_servers(specs) == "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094"
    assert specs[2].controller_address == "127.0.0.1:11094"
    assert specs[2].internal_address == "127.0.0.1:12094"


def test_local_up_flags_and_broker_arguments() -> None:
    options, specs = parse_arguments(
        [
            "local",
            "up",
            "--data-dir",
            "/tmp/cluster",
            "--port",
            "19092",
            "--host",
            "::1",
            "--brokers",
            "1",
            "--ready-timeout",
            "5",
            "--",
            "--log-retention-ms",
            "1000",
        ]
    )
    assert options.ready_timeout == 5.0
    (spec,) = specs
    assert spec.data_dir == Path("/tmp/cluster/broker-0")
    assert spec.kafka_address == "[::1]:19092"
    assert spec.http_address == f"[::1]:{19092 + HTTP_PORT_OFFSET}"
    command = spec.command()
    assert command[:3] == [sys.executable, "-m", "brook_broker"]
    flags = dict(zip(command[3::2], command[4::2], strict=True))
    assert flags == {
        "--node-id": "0",
        "--data-dir": "/tmp/cluster/broker-0",
        "--listen": "[::1]:19092",
        "--advertised-listener": "[::1]:19092",
        "--http-listen": f"[::1]:{19092 + HTTP_PORT_OFFSET}",
        "--controller-quorum": f"0@[::1]:{19092 + CONTROLLER_PORT_OFFSET}",
        "--controller-listen": f"[::1]:{19092 + CONTROLLER_PORT_OFFSET}",
        "--internal-listen": f"[::1]:{19092 + INTERNAL_PORT_OFFSET}",
        "--internal-advertised-listener": f"[::1]:{19092 + INTERNAL_PORT_OFFSET}",
        # The secret itself is never on the command line, where ps would show it.
        "--cluster-secret-file": "/tmp/cluster/cluster.secret",
        "--log-retention-ms": "1000",
    }


def test_wildcard_host_listens_everywhere_but_advertises_loopback() -> None:
    _, specs = parse_arguments(["local", "up", "--host", "0.0.0.0"])
    command = specs[1].command()
    assert command[command.index("--listen") + 1] == "0.0.0.0:9093"
    assert command[command.index("--advertised-listener") + 1] == "127.0.0.1:9093"
    assert command[command.index("--controller-listen") + 1] == "0.0.0.0:11093"
    assert command[command.index("--controller-quorum") + 1].startswith("0@127.0.0.1:11092,")
    assert command[command.index("--internal-listen") + 1] == "0.0.0.0:12093"
    assert command[command.index("--internal-advertised-listener") + 1] == "127.0.0.1:12093"
    assert specs[1].http_address == f"127.0.0.1:{9093 + HTTP_PORT_OFFSET}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["local", "up", "--brokers", "0"], "expected a number >= 1"),
        (["local", "up", "--port", "63535"], "--port 63535"),
        (["local", "up", "--port", "0"], "--port 0"),
        (["local", "up", "--port", "x"], "invalid int value"),
        (["local", "up", "--stop-timeout", "0"], "expected seconds > 0"),
        (["local"], "required"),
        ([], "required"),
        (["local", "down"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_port_scheme_of_a_cluster() -> None:
    specs = plan_cluster(brokers=5, data_dir=Path("d"), host="127.0.0.1", port=30000)
    assert [(s.kafka_port, s.http_port, s.controller_port, s.internal_port) for s in specs] == [
        (30000 + index, 31000 + index, 32000 + index, 33000 + index) for index in range(5)
    ]
    assert {spec.cluster_secret_file for spec in specs} == {Path("d/cluster.secret")}
    assert {spec.controller_quorum for spec in specs} == {
        ",".join(f"{index}@127.0.0.1:{32000 + index}" for index in range(5))
    }
    with pytest.raises(ValueError, match="Raft"):
        plan_cluster(brokers=3, data_dir=Path("d"), host="127.0.0.1", port=63534)
    with pytest.raises(ValueError, match=r"internal \(\+3000\)"):
        plan_cluster(brokers=3, data_dir=Path("d"), host="127.0.0.1", port=62534)


def test_the_cluster_secret_is_made_once_for_the_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "cluster.secret"
    ensure_cluster_secret(path)
    secret = path.read_text()
    assert len(secret) >= 32 and secret.strip() == secret
    assert path.stat().st_mode & 0o777 == 0o600
    ensure_cluster_secret(path)  # a later run of the same data root
    assert path.read_text() == secret
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.secret"]
    other = tmp_path / "other" / "cluster.secret"
    ensure_cluster_secret(other)
    assert other.read_text() != secret


def test_a_restart_gets_the_secret_the_cluster_runs_with(tmp_path: Path) -> None:
    path = tmp_path / "cluster.secret"
    secret = ensure_cluster_secret(path)
    assert secret == path.read_text()
    for spoil in (path.unlink, lambda: path.write_text(""), lambda: path.write_text("other")):
        spoil()
        assert ensure_cluster_secret(path, secret) == secret
        assert path.read_text() == secret
        assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.secret"]


def test_an_empty_secret_file_is_refused_on_a_first_start(tmp_path: Path) -> None:
    path = tmp_path / "cluster.secret"
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty; remove it"):
        ensure_cluster_secret(path)


def test_a_broker_without_a_quorum_gets_no_quorum_flags() -> None:
    spec = BrokerSpec(node_id=0, data_dir=Path("d"), host="h", kafka_port=1, http_port=2)
    assert spec.controller_address is None
    assert "--controller-quorum" not in spec.command()
    assert spec.internal_address is None
    assert "--internal-listen" not in spec.command()
    assert "--cluster-secret-file" not in spec.command()


def test_bootstrap_lists_every_broker_in_node_order() -> None:
    specs = [
        BrokerSpec(
            node_id=index,
            data_dir=Path("d"),
            host="127.0.0.1",
            kafka_port=port,
            http_port=port + HTTP_PORT_OFFSET,
        )
        for index, port in enumerate((9092, 9093, 9094))
    ]
    assert bootstrap_servers(specs) == "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094"


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1", "127.0.0.1:1"), ("::1", "[::1]:1"), ("broker-0", "broker-0:1")],
)
def test_format_address(host: str, expected: str) -> None:
    assert format_address(host, 1) == expected


def test_cluster_file_with_pids_that_run_no_broker_is_stale(tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text(
        json.dumps({"brokers": [{"node_id": 0, "pid": os.getpid()}, {"node_id": 1, "pid": None}]})
    )
    assert running_broker_pids(tmp_path) == []


def test_missing_or_broken_cluster_file_means_no_cluster(tmp_path: Path) -> None:
    assert running_broker_pids(tmp_path) == []
    (tmp_path / "cluster.json").write_text("{not json")
    assert running_broker_pids(tmp_path) == []


@pytest.mark.parametrize(
    ("code", "expected"),
    [(0, "exited with code 0"), (1, "exited with code 1"), (-9, "was killed by SIGKILL")],
)
def test_describe_exit(code: int, expected: str) -> None:
    assert describe_exit(code) == expected


def test_stopping_brokers_that_never_started_does_nothing() -> None:
    specs = plan_cluster(brokers=3, data_dir=Path("d"), host="127.0.0.1", port=9092)
    assert stop_all([BrokerProcess(spec) for spec in specs], timeout=1) == []

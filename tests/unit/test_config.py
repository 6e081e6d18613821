"""Broker settings: flags beat BROOK_* variables, which beat defaults; bad values exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from brook_broker.config import (
    BrokerConfig,
    build_parser,
    load_config,
    parse_quorum,
    split_host_port,
)


def test_defaults_without_flags_or_environment() -> None:
    assert load_config([], {}) == BrokerConfig()


def test_flags_set_every_kind_of_value() -> None:
    config = load_config(
        [
            "--node-id",
            "3",
            "--data-dir",
            "/srv/brook",
            "--listen",
            "0.0.0.0:19092",
            "--advertised-listener",
            "broker-3.brook:9092",
            "--http-listen",
            "127.0.0.1:19644",
            "--auto-create-topics",
            "false",
            "--log-retention-ms",
            "-1",
            "--message-max-bytes",
            "2048",
            "--log-level",
            "INFO",
        ],
        {},
    )
    assert config.node_id == 3
    assert config.data_dir == Path("/srv/brook")
    assert config.listen_address == ("0.0.0.0", 19092)
    assert config.advertised_address == ("broker-3.brook", 9092)
    assert config.http_address == ("127.0.0.1", 19644)
    assert config.auto_create_topics is False
    assert config.log_retention_ms == -1
    assert config.message_max_bytes == 2048
    assert config.log_level == "INFO"


def test_environment_variables_set_values() -> None:
    config = load_config(
        [],
        {
            "BROOK_NODE_ID": "7",
            "BROOK_DATA_DIR": "/var/lib/brook",
            "BROOK_LOG_SEGMENT_BYTES": "1048576",
            "BROOK_AUTO_CREATE_TOPICS": "no",
            "BROOK_ADVERTISED_LISTENER": "brook-7:9092",
        },
    )
    assert config.node_id == 7
    assert config.data_dir == Path("/var/lib/brook")
    assert config.log_segment_bytes == 1048576
    assert config.auto_create_topics is False
    assert config.advertised_address == ("brook-7", 9092)


def test_flag_wins_over_environment() -> None:
    config = load_config(
        ["--num-partitions", "6"], {"BROOK_NUM_PARTITIONS": "3", "BROOK_NODE_ID": "2"}
    )
    assert config.num_partitions == 6
    assert config.node_id == 2


def test_empty_environment_variable_means_unset() -> None:
    assert load_config([], {"BROOK_NODE_ID": ""}).node_id == BrokerConfig().node_id


def test_unrelated_environment_is_ignored() -> None:
    assert load_config([], {"NODE_ID": "9", "BROOK": "x"}) == BrokerConfig()


def test_advertised_address_defaults_to_listener() -> None:
    assert load_config(["--listen", "10.0.0.5:9093"], {}).advertised_address == ("10.0.0.5", 9093)


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--node-id", "one"], {}, "--node-id"),
        (["--auto-create-topics", "maybe"], {}, "expected true or false"),
        (["--listen", "localhost"], {}, "--listen"),
        (["--http-listen", "host:port"], {}, "--http-listen"),
        (["--advertised-listener", "broker:"], {}, "--advertised-listener"),
        (["--no-such-flag", "1"], {}, "unrecognized arguments"),
        ([], {"BROOK_LOG_RETENTION_MS": "week"}, "BROOK_LOG_RETENTION_MS"),
        ([], {"BROOK_AUTO_CREATE_TOPICS": "2"}, "BROOK_AUTO_CREATE_TOPICS"),
        ([], {"BROOK_LISTEN": "9092"}, "--listen"),
        (["--controller-quorum", "0@a:1,b:2"], {}, "--controller-quorum"),
        (["--controller-quorum", "0@a:1,0@b:2"], {}, "named twice"),
        (["--controller-listen", "nowhere"], {}, "--controller-listen"),
        (["--broker-heartbeat-interval-ms", "2000"], {}, "--broker-session-timeout-ms"),
        (["--broker-heartbeat-interval-ms", "0"], {}, "--broker-heartbeat-interval-ms"),
        (["--replica-lag-time-max-ms", "0"], {}, "--replica-lag-time-max-ms"),
        (["--max-partitions-per-request", "10001"], {}, "must be at most 10000"),
        (["--max-broker-partitions", "0"], {}, "--max-broker-partitions must be at least 1"),
        ([], {"BROOK_MAX_PARTITIONS": "0"}, "--max-partitions must be at least 1"),
        (["--shutdown-timeout-ms", "0"], {}, "--shutdown-timeout-ms must be at least 1"),
    ],
)
def test_bad_values_exit_with_a_message(
    argv: list[str], environ: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_config(argv, environ)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9092", ("127.0.0.1", 9092)),
        ("[::1]:9092", ("::1", 9092)),
        (":9092", ("0.0.0.0", 9092)),
        ("broker-0.brook.default.svc:9092", ("broker-0.brook.default.svc", 9092)),
    ],
)
def test_split_host_port(address: str, expected: tuple[str, int]) -> None:
    assert split_host_port(address) == expected


def test_every_setting_has_a_flag_with_help() -> None:
    actions = {action.dest: action for action in build_parser()._actions}
    for name in BrokerConfig.__dataclass_fields__:
        assert actions[name].help


def test_cluster_flags() -> None:
    config = load_config(
        [
            "--controller-quorum",
            "0@10.0.0.1:9093, 1@broker-1.brook:9093,2@[::1]:9093",
            "--controller-listen",
            "0.0.0.0:9093",
            "--rack",
            "eu-1a",
            "--broker-heartbeat-interval-ms",
            "100",
            "--broker-session-timeout-ms",
            "900",
            "--replica-lag-time-max-ms",
            "5000",
            "--replication-throttle-bytes",
            "1048576",
        ],
        {"BROOK_AUTO_LEADER_REBALANCE": "false"},
    )
    assert config.voters == {0: "10.0.0.1:9093", 1: "broker-1.brook:9093", 2: "::1:9093"}
    assert config.controller_listen == "0.0.0.0:9093"
    assert config.rack == "eu-1a"
    assert (config.broker_heartbeat_interval_ms, config.broker_session_timeout_ms) == (100, 900)
    assert config.replica_lag_time_max_ms == 5000
    assert config.replication_throttle_bytes == 1048576
    assert config.auto_leader_rebalance is False


def test_without_a_quorum_the_broker_is_its_own() -> None:
    config = load_config([], {})
    assert config.voters == {}
    assert (config.broker_heartbeat_interval_ms, config.broker_session_timeout_ms) == (250, 1500)
    assert config.auto_leader_rebalance is True and config.rack is None


@pytest.mark.parametrize("text", ["", "0@", "x@a:1", "0@a", "0@a:1,1@a:1"])
def test_parse_quorum_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quorum(text)

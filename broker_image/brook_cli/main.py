"""``brook``: the command-line tool. ``brook local up`` runs a cluster on this machine in
the foreground, for development and for trying Brook with any Kafka client.

Only the bootstrap line goes to stdout, so scripts can read it; everything else (the
CLI's messages and the brokers' log lines) goes to stderr.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from types import FrameType

from .local import (
    CONTROLLER_PORT_OFFSET,
    HTTP_PORT_OFFSET,
    BrokerFailed,
    BrokerProcess,
    BrokerSpec,
    addresses_in_use,
    bootstrap_servers,
    cluster_file,
    describe_exit,
    plan_cluster,
    running_broker_pids,
    stop_all,
    write_cluster_file,
)

UP_DESCRIPTION = f"""\
Run a local cluster in the foreground until Ctrl-C or SIGTERM. Broker i listens for
Kafka clients on PORT+i, serves /healthz, /readyz and /metrics on PORT+i+{HTTP_PORT_OFFSET} and
speaks Raft (the metadata quorum, of which every broker is a voter) on
PORT+i+{CONTROLLER_PORT_OFFSET}; its data lives in DATA_DIR/broker-<i>. Once every broker is
ready, one line goes to stdout: "bootstrap: HOST:PORT[,HOST:PORT...]", and
DATA_DIR/cluster.json lists each broker's node id, pid and addresses (removed again on a
clean stop). Broker log lines go to stderr; set BROOK_LOG_LEVEL=INFO for lifecycle
lines. Arguments after "--" are passed to every broker, e.g.
"brook local up -- --log-retention-ms 60000".
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text}")
    return value


def _version() -> str:
    try:
        return metadata.version("brook")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brook", description="Brook command-line tool.")
    parser.add_argument("--version", action="version", version=f"brook {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    local = commands.add_parser("local", help="run a Brook cluster on this machine")
    local_commands = local.add_subparsers(dest="local_command", required=True, metavar="COMMAND")
    up = local_commands.add_parser(
        "up",
        help="run a local cluster in the foreground",
        description=UP_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("--brokers", type=_positive_int, default=3, help="number of brokers (3)")
    up.add_argument(
        "--data-dir", type=Path, default=Path(".brook-local"), help="data root (./.brook-local)"
    )
    up.add_argument("--port", type=int, default=9092, help="Kafka port of broker 0 (9092)")
    up.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (127.0.0.1); clients are given 127.0.0.1 for 0.0.0.0",
    )
    up.add_argument(
        "--ready-timeout",
        type=_positive_float,
        default=60.0,
        help="seconds to wait for every broker's /readyz (60)",
    )
    up.add_argument(
        "--stop-timeout",
        type=_positive_float,
        default=20.0,
        help="seconds brokers get to stop after SIGTERM before SIGKILL (20)",
    )
    return parser


def parse_arguments(argv: Sequence[str]) -> tuple[argparse.Namespace, list[BrokerSpec]]:
    """Parse the command line; for ``local up`` also plan the brokers. Bad input exits 2."""
    argv = list(argv)
    broker_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, broker_args = argv[:split], argv[split + 1 :]
    parser = build_parser()
    options = parser.parse_args(argv)
    if broker_args and (options.command, options.local_command) != ("local", "up"):
        parser.error("arguments after -- are only for 'brook local up'")
    try:
        specs = plan_cluster(
            brokers=options.brokers,
            data_dir=options.data_dir,
            host=options.host,
            port=options.port,
            broker_args=broker_args,
        )
    except ValueError as error:
        parser.error(str(error))
    return options, specs


def _say(message: str) -> None:
    print(f"brook: {message}", file=sys.stderr, flush=True)


class _StopRequest:
    """Set by SIGINT or SIGTERM; the waits below poll it so a stop is never lost."""

    def __init__(self) -> None:
        self.requested = False
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __call__(self) -> bool:
        return self.requested


def local_up(options: argparse.Namespace, specs: Sequence[BrokerSpec]) -> int:
    data_dir: Path = options.data_dir
    already = running_broker_pids(data_dir)
    if already:
        _say(
            f"a local cluster already runs from {data_dir} (pids {', '.join(map(str, already))}); "
            "stop it or choose another --data-dir"
        )
        return 1
    busy = addresses_in_use(specs)
    if busy:
        _say(f"already in use: {', '.join(busy)}; choose another --port")
        return 1
    data_dir.mkdir(parents=True, exist_ok=True)
    stop = _StopRequest()
    brokers = [BrokerProcess(spec) for spec in specs]
    exit_code = 0
    try:
        for broker in brokers:
            broker.start()
        if all(broker.wait_ready(options.ready_timeout, interrupted=stop) for broker in brokers):
            write_cluster_file(data_dir, brokers)
            print(f"bootstrap: {bootstrap_servers(specs)}", flush=True)
        while not stop():
            for broker in brokers:
                code = broker.exit_code()
                if code is not None:
                    raise BrokerFailed(f"broker {broker.spec.node_id} {describe_exit(code)}")
            time.sleep(0.2)
    except BrokerFailed as failure:
        _say(f"{failure}; stopping the cluster")
        exit_code = 1
    finally:
        _say("stopping brokers")
        killed = stop_all(brokers, options.stop_timeout)
        if killed:
            _say(f"brokers {killed} did not stop within {options.stop_timeout:g} s and were killed")
            exit_code = 1
        cluster_file(data_dir).unlink(missing_ok=True)
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    options, specs = parse_arguments(sys.argv[1:] if argv is None else argv)
    return local_up(options, specs)

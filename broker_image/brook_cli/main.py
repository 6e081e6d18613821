"""``brook``: the command-line tool. ``brook local up`` runs a cluster on this machine in
the foreground, for development and for trying Brook with any Kafka client; ``brook
groups list`` and ``brook groups describe`` show consumer groups and their lag.

Only results go to stdout (the bootstrap line, the tables), so scripts can read them;
everything else (the CLI's messages and the brokers' log lines) goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import textwrap
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from types import FrameType

from brook_client.admin import KafkaAdmin
from brook_client.group_admin import GroupDescription, GroupLag
from brook_client.lag import OffsetReset
from brook_client.session import KafkaRequestError, parse_bootstrap

from .local import (
    CONTROLLER_PORT_OFFSET,
    HTTP_PORT_OFFSET,
    INTERNAL_PORT_OFFSET,
    BrokerFailed,
    BrokerProcess,
    BrokerSpec,
    addresses_in_use,
    bootstrap_servers,
    cluster_file,
    lock_data_root,
    plan_cluster,
    running_broker_pids,
    stop_all,
    write_cluster_file,
)
from .supervisor import RestartPolicy, Supervisor

_RESTARTS = RestartPolicy()
_RESTART_HELP = textwrap.fill(
    "A broker that dies is reported on stderr and started again after a back-off of "
    f"{_RESTARTS.first_delay:g} s, which doubles up to {_RESTARTS.max_delay:g} s while the "
    f"broker dies again within {_RESTARTS.stable_after:g} s of each start; after "
    f"{_RESTARTS.give_up_after} such deaths in a row it is given up (with --no-restart, at "
    "once). The others keep serving; cluster.json shows the new pid (null while a broker "
    "is down). A broker that fails its first start fails the command.",
    width=88,
)

UP_DESCRIPTION = f"""\
Run a local cluster in the foreground until Ctrl-C or SIGTERM. Broker i listens for
Kafka clients on PORT+i, serves /healthz, /readyz and /metrics on PORT+i+{HTTP_PORT_OFFSET} and
speaks Raft (the metadata quorum, of which every broker is a voter) on
PORT+i+{CONTROLLER_PORT_OFFSET}; the other brokers' requests go to its internal listener on
PORT+i+{INTERNAL_PORT_OFFSET}. Its data lives in DATA_DIR/broker-<i>. The brokers prove
themselves to each other with a secret made on the first run in DATA_DIR/cluster.secret
(readable by its owner only) and kept for later runs. Once every broker is
ready, one line goes to stdout: "bootstrap: HOST:PORT[,HOST:PORT...]", and
DATA_DIR/cluster.json lists each broker's node id, pid and addresses (removed again on a
clean stop). Broker log lines go to stderr; set BROOK_LOG_LEVEL=INFO for lifecycle
lines. Arguments after "--" are passed to every broker, e.g.
"brook local up -- --log-retention-ms 60000".

{_RESTART_HELP}
"""

GROUPS_DESCRIBE_DESCRIPTION = """\
Show a consumer group's committed offsets and lag, one row per partition the group has
committed offsets for or its members are assigned, sorted by topic and partition, then
a line with the group's state. CURRENT-OFFSET is the group's committed offset,
LOG-END-OFFSET the partition's high watermark (the next offset a consumer can read),
LAG their difference. A partition the group has no committed offset for shows
CURRENT-OFFSET "-", and its LAG is where a consumer with that auto.offset.reset would
start: 0 for --reset latest (the default, as for Kafka consumers), log end - log start
for --reset earliest. LOG-END-OFFSET and LAG are "-" while the partition has no leader
that answers. Exits 1 with a message on stderr if the group does not exist or the
cluster cannot be asked.
"""

GROUPS_LIST_DESCRIPTION = """\
List every consumer group the brokers coordinate, sorted by group id, with its state,
number of members, assignment strategy and coordinator (broker node id).
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


def _bootstrap(text: str) -> str:
    try:
        parse_bootstrap(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


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
    up.add_argument(
        "--no-restart",
        action="store_true",
        help="leave a broker that dies stopped (the others keep serving)",
    )
    _add_groups_parser(commands)
    return parser


def _add_groups_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    groups = commands.add_parser("groups", help="list consumer groups, show their lag")
    groups_commands = groups.add_subparsers(dest="groups_command", required=True, metavar="COMMAND")
    listing = groups_commands.add_parser(
        "list", help="list consumer groups", description=GROUPS_LIST_DESCRIPTION
    )
    describe = groups_commands.add_parser(
        "describe",
        help="show a consumer group's offsets and lag",
        description=GROUPS_DESCRIBE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    describe.add_argument("group", help="the group id")
    describe.add_argument(
        "--reset",
        type=OffsetReset,
        choices=list(OffsetReset),
        default=OffsetReset.LATEST,
        help="the consumers' auto.offset.reset, for the lag of partitions without a "
        "committed offset (latest)",
    )
    for command in (listing, describe):
        command.add_argument(
            "--bootstrap",
            type=_bootstrap,
            required=True,
            metavar="HOST:PORT[,HOST:PORT...]",
            help="brokers to ask first (each is tried in turn)",
        )
        command.add_argument(
            "--timeout",
            type=_positive_float,
            default=15.0,
            help="seconds to keep looking for a group's coordinator or a partition's "
            "leader while they move (15)",
        )


def parse_arguments(argv: Sequence[str]) -> tuple[argparse.Namespace, list[BrokerSpec]]:
    """Parse the command line; for ``local up`` also plan the brokers. Bad input exits 2."""
    argv = list(argv)
    broker_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, broker_args = argv[:split], argv[split + 1 :]
    parser = build_parser()
    options = parser.parse_args(argv)
    local_up_command = options.command == "local" and options.local_command == "up"
    if broker_args and not local_up_command:
        parser.error("arguments after -- are only for 'brook local up'")
    if options.command != "local":
        return options, []
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
    lock = lock_data_root(data_dir)
    if lock is None:
        _say(f"another 'brook local up' runs from {data_dir}; stop it or choose another --data-dir")
        return 1
    try:
        return _run_cluster(options, specs)
    finally:
        os.close(lock)


def _run_cluster(options: argparse.Namespace, specs: Sequence[BrokerSpec]) -> int:
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
        supervisor = Supervisor(
            brokers,
            None if options.no_restart else _RESTARTS,
            say=_say,
            changed=lambda: write_cluster_file(data_dir, brokers),
        )
        while not stop():
            supervisor.check()
            if not supervisor.serving:
                raise BrokerFailed("no broker is left running")
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


# --- brook groups ------------------------------------------------------------------------

DESCRIBE_COLUMNS = (
    "GROUP",
    "TOPIC",
    "PARTITION",
    "CURRENT-OFFSET",
    "LOG-END-OFFSET",
    "LAG",
    "CONSUMER-ID",
    "HOST",
    "CLIENT-ID",
)
LIST_COLUMNS = ("GROUP", "STATE", "MEMBERS", "ASSIGNMENT-STRATEGY", "COORDINATOR")


def format_table(header: Sequence[str], rows: Sequence[Sequence[object | None]]) -> str:
    """Columns padded to their widest cell, as kafka-consumer-groups prints; None is "-"."""
    cells = [list(header), *([_cell(value) for value in row] for row in rows)]
    widths = [max(len(line[column]) for line in cells) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def _cell(value: object | None) -> str:
    return "-" if value is None or value == "" else str(value)


def _members(count: int) -> str:
    return f"{count} member" if count == 1 else f"{count} members"


def format_group_lag(group: GroupLag, reset: OffsetReset) -> str:
    """The table of ``brook groups describe`` and its closing state line."""
    description = group.description
    table = format_table(
        DESCRIBE_COLUMNS,
        [
            (
                description.group_id,
                row.topic,
                row.partition,
                row.committed_offset,
                row.log_end_offset,
                row.lag,
                row.member_id,
                row.host,
                row.client_id,
            )
            for row in group.partitions
        ],
    )
    state = (
        f"Group {description.group_id!r} is {description.state} with "
        f"{_members(len(description.members))} (coordinator: broker "
        f"{description.coordinator}); total lag {group.total_lag}."
    )
    if any(row.committed_offset is None for row in group.partitions):
        state += f" Partitions without a committed offset count lag from --reset {reset}."
    return f"{table}\n\n{state}"


def format_group_list(groups: Sequence[GroupDescription]) -> str:
    """The table of ``brook groups list``."""
    return format_table(
        LIST_COLUMNS,
        [
            (group.group_id, group.state, len(group.members), group.protocol, group.coordinator)
            for group in groups
        ],
    )


async def _groups(options: argparse.Namespace) -> str:
    async with KafkaAdmin(
        options.bootstrap, client_id="brook-groups", retry_timeout=options.timeout
    ) as reader:
        if options.groups_command == "list":
            return format_group_list(await reader.list_groups())
        group = await reader.group_lag(options.group, options.reset)
        return format_group_lag(group, options.reset)


def groups(options: argparse.Namespace) -> int:
    try:
        output = asyncio.run(_groups(options))
    except KafkaRequestError as error:
        _say(str(error))
        return 1
    except KeyboardInterrupt:
        return 130
    print(output, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    options, specs = parse_arguments(sys.argv[1:] if argv is None else argv)
    if options.command == "groups":
        return groups(options)
    return local_up(options, specs)

"""``brook local up``'s supervision of its brokers, on a fake clock with stand-in processes:
when a dead broker is started again, when it is given up, and what the user is told."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from brook_cli.local import BrokerSpec
from brook_cli.supervisor import RestartPolicy, Supervisor

SIGKILL_CODE = -9


def test_back_off_doubles_up_to_its_cap_then_gives_up() -> None:
    policy = RestartPolicy(first_delay=1, max_delay=8, stable_after=10, give_up_after=6)
    assert [policy.delay(deaths) for deaths in range(1, 7)] == [1, 2, 4, 8, 8, None]


def test_a_broker_that_stayed_up_starts_its_count_over() -> None:
    policy = RestartPolicy(stable_after=10)
    assert policy.deaths_in_a_row(before=4, uptime=9.9) == 5
    assert policy.deaths_in_a_row(before=4, uptime=10.0) == 1


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class StandIn:
    """What the supervisor sees of a broker process: a pid, an exit code, ``start``."""

    spec: BrokerSpec
    pid: int
    code: int | None = None
    start_error: OSError | None = None
    starts: int = 0

    def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.starts += 1
        self.pid += 1
        self.code = None

    def exit_code(self) -> int | None:
        return self.code


@dataclass
class Local:
    """Three stand-in brokers under a supervisor, and what it said and wrote."""

    policy: RestartPolicy | None
    clock: Clock = field(default_factory=Clock)
    said: list[str] = field(default_factory=list)
    writes: int = 0
    brokers: list[StandIn] = field(init=False)
    supervisor: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        self.brokers = [
            StandIn(BrokerSpec(node, Path("d"), "127.0.0.1", 9092 + node, 10092 + node), 100 * node)
            for node in range(3)
        ]
        self.supervisor = Supervisor(
            self.brokers, self.policy, say=self.said.append, changed=self.changed, clock=self.clock
        )

    def changed(self) -> None:
        self.writes += 1

    def after(self, seconds: float) -> None:
        self.clock.now += seconds
        self.supervisor.check()


POLICY = RestartPolicy(first_delay=1, max_delay=8, stable_after=10, give_up_after=3)


def test_a_killed_broker_is_reported_and_restarted_after_its_back_off() -> None:
    local = Local(POLICY)
    local.after(60)
    assert local.said == [] and local.writes == 0
    local.brokers[2].code = SIGKILL_CODE
    local.after(0.2)
    assert local.said == ["broker 2 was killed by SIGKILL; restarting it in 1 s"]
    assert local.writes == 1, "cluster.json shows the broker down"
    local.after(0.5)
    assert local.brokers[2].starts == 0
    local.after(0.5)
    assert local.brokers[2].starts == 1
    assert local.said[-1] == "broker 2 restarted (pid 201)"
    assert local.writes == 2, "cluster.json shows the new pid"
    assert [broker.starts for broker in local.brokers] == [0, 0, 1]
    assert local.supervisor.serving


def test_a_broker_that_dies_right_after_each_start_is_given_up() -> None:
    local = Local(POLICY)
    local.after(60)
    waits = []
    for _ in range(3):
        local.brokers[1].code = 1
        local.after(0.1)
        waits.append(local.said[-1])
        local.after(8)
    assert waits == [
        "broker 1 exited with code 1; restarting it in 1 s",
        "broker 1 exited with code 1; restarting it in 2 s",
        "broker 1 exited with code 1; it died 3 times in a row, each within 10 s of "
        "starting: giving up on it",
    ]
    assert local.brokers[1].starts == 2
    local.after(60)
    assert local.brokers[1].starts == 2, "a broker given up is not started again"
    assert local.supervisor.serving, "the others still run"


def test_a_broker_that_stays_up_between_deaths_is_always_restarted_soon() -> None:
    local = Local(POLICY)
    for _ in range(5):
        local.after(30)
        local.brokers[0].code = SIGKILL_CODE
        local.after(0.1)
        assert local.said[-1].endswith("restarting it in 1 s")
        local.after(1)
    assert local.brokers[0].starts == 5


def test_no_restart_reports_the_death_and_keeps_the_others() -> None:
    local = Local(None)
    local.brokers[2].code = SIGKILL_CODE
    local.after(0.2)
    assert local.said == ["broker 2 was killed by SIGKILL; not restarting it (--no-restart)"]
    assert local.writes == 1
    local.after(60)
    assert local.brokers[2].starts == 0 and local.supervisor.serving
    for broker in local.brokers[:2]:
        broker.code = 0
    local.after(0.2)
    assert not local.supervisor.serving, "no broker is left running"


def test_a_restart_that_cannot_even_spawn_counts_as_a_death() -> None:
    local = Local(POLICY)
    local.after(60)
    local.brokers[0].code = SIGKILL_CODE
    local.brokers[0].start_error = PermissionError(13, "Permission denied")
    local.after(0.1)
    local.after(1)
    assert local.said[-1] == (
        "broker 0 could not be started ([Errno 13] Permission denied); restarting it in 2 s"
    )


@pytest.mark.parametrize("give_up_after", [1, 2])
def test_give_up_after_counts_every_death_in_a_row(give_up_after: int) -> None:
    local = Local(RestartPolicy(give_up_after=give_up_after))
    for _ in range(give_up_after):
        local.brokers[0].code = 1
        local.after(0.1)
        local.after(10)
    assert local.said[-1].endswith("giving up on it")
    assert local.brokers[0].starts == give_up_after - 1

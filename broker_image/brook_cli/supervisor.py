"""Keep the brokers of ``brook local up`` running, as a process supervisor would: a broker
that dies is reported (which one, and how) and started again after a back-off, while the
others keep serving, so a script can ``kill -9`` one broker and watch the cluster heal.

The decisions (how long to wait, when to give up on a broker that dies again right after
each start) depend only on an injected clock, so unit tests drive them without processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .local import BrokerFailed, BrokerSpec, describe_exit


@dataclass(frozen=True)
class RestartPolicy:
    """Back-off in the manner of systemd's and Kubernetes's restart loops.

    A broker that dies waits ``first_delay`` seconds before it is started again; each
    further death within ``stable_after`` seconds of its start doubles the wait, up to
    ``max_delay``. A broker that stayed up ``stable_after`` seconds starts over at
    ``first_delay``. One that died ``give_up_after`` times in a row, each time soon
    after starting, would only keep failing: it is given up."""

    first_delay: float = 1.0
    max_delay: float = 8.0
    stable_after: float = 10.0
    give_up_after: int = 6

    def deaths_in_a_row(self, before: int, uptime: float) -> int:
        """The count after a death ``uptime`` seconds after a start, ``before`` being the
        count up to that start."""
        return before + 1 if uptime < self.stable_after else 1

    def delay(self, deaths_in_a_row: int) -> float | None:
        """Seconds to wait before the next start; None once the broker is given up."""
        if deaths_in_a_row >= self.give_up_after:
            return None
        return min(self.first_delay * 2.0 ** (deaths_in_a_row - 1), self.max_delay)


class Supervised(Protocol):
    """What the supervisor needs of a broker process (``local.BrokerProcess``)."""

    spec: BrokerSpec

    @property
    def pid(self) -> int: ...

    def start(self) -> None:
        """Raises OSError or BrokerFailed when the broker cannot be started."""

    def exit_code(self) -> int | None: ...


@dataclass
class _Watch:
    broker: Supervised
    started_at: float
    deaths_in_a_row: int = 0
    restart_at: float | None = None
    """Set while the broker is down and waits out its back-off."""
    given_up: bool = False


class Supervisor:
    """Watches brokers that were started and became ready. ``check`` is called from the
    CLI's loop (on the main thread: Linux's parent-death signal follows the thread that
    forked); ``changed`` is called once per check in which a pid changed or went away.
    ``policy`` None is ``--no-restart``: a broker that dies is reported and left stopped."""

    def __init__(
        self,
        brokers: Sequence[Supervised],
        policy: RestartPolicy | None,
        say: Callable[[str], None],
        changed: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._say = say
        self._changed = changed
        self._clock = clock
        now = clock()
        self._watches = [_Watch(broker, started_at=now) for broker in brokers]

    @property
    def serving(self) -> bool:
        """False once no broker runs or is going to be started again."""
        return any(not watch.given_up for watch in self._watches)

    def check(self) -> None:
        """Notice brokers that died, and start those whose back-off is over."""
        now = self._clock()
        changed = False
        for watch in self._watches:
            if watch.given_up:
                continue
            if watch.restart_at is None:
                code = watch.broker.exit_code()
                if code is not None:
                    self._died(watch, describe_exit(code), now)
                    changed = True
            elif now >= watch.restart_at:
                self._restart(watch, now)
                changed = True
        if changed:
            self._changed()

    def _died(self, watch: _Watch, how: str, now: float) -> None:
        name = f"broker {watch.broker.spec.node_id}"
        if self._policy is None:
            watch.given_up = True
            self._say(f"{name} {how}; not restarting it (--no-restart)")
            return
        watch.deaths_in_a_row = self._policy.deaths_in_a_row(
            watch.deaths_in_a_row, now - watch.started_at
        )
        delay = self._policy.delay(watch.deaths_in_a_row)
        if delay is None:
            watch.given_up = True
            self._say(
                f"{name} {how}; it died {watch.deaths_in_a_row} times in a row, each within "
                f"{self._policy.stable_after:g} s of starting: giving up on it"
            )
            return
        watch.restart_at = now + delay
        self._say(f"{name} {how}; restarting it in {delay:g} s")

    def _restart(self, watch: _Watch, now: float) -> None:
        watch.restart_at = None
        watch.started_at = now
        try:
            watch.broker.start()
        except (OSError, BrokerFailed) as error:
            self._died(watch, f"could not be started ({error})", now)
            return
        self._say(f"broker {watch.broker.spec.node_id} restarted (pid {watch.broker.pid})")

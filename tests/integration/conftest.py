"""Fixtures that run real broker processes on loopback, always stopped at teardown."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .brokers import BrokerFailed, BrokerProcess

StartBroker = Callable[..., BrokerProcess]


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[StartBroker]:
    """Start brokers with extra flags: ``start_broker("--message-max-bytes", "100000")``."""
    started: list[BrokerProcess] = []
    names = itertools.count()

    def start(*extra_args: str) -> BrokerProcess:
        broker = BrokerProcess(tmp_path / f"broker-{next(names)}", extra_args)
        started.append(broker)
        try:
            broker.start()
        except BrokerFailed as error:
            pytest.fail(str(error), pytrace=False)
        return broker

    yield start
    for broker in started:
        broker.stop()
        print(f"--- log of the broker in {broker.directory}\n{broker.log_tail()}")


@pytest.fixture
def broker(start_broker: StartBroker) -> BrokerProcess:
    """One broker with default settings and its own data directory."""
    return start_broker()

"""``brook-broker``: run one broker until SIGTERM or SIGINT, then stop it cleanly.

A clean stop matters: the broker flushes and closes its segments, so the next start
needs no recovery scan and no acknowledged record is lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Sequence

from .broker import Broker
from .config import BrokerConfig, load_config
from .logs import configure_logging
from .rack import RackLookupError, node_rack

log = logging.getLogger(__name__)


async def serve(config: BrokerConfig) -> None:
    """Start the broker, wait for a stop signal, stop the broker."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    broker = Broker(config)
    # Starting can take long (waiting for a quorum majority, or to be added as a voter):
    # a stop signal meanwhile abandons the start.
    starting = asyncio.create_task(broker.start())
    stopped = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
            await stopped
        log.info("stopping broker")
    finally:
        for task in (starting, stopped):
            task.cancel()
        await asyncio.gather(starting, stopped, return_exceptions=True)
        await broker.stop()
    log.info("broker stopped")


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(argv)
    try:
        configure_logging(config.log_level, static={"node": config.node_id})
    except ValueError as error:
        print(f"brook-broker: --log-level: {error}", file=sys.stderr)
        return 2
    if config.rack is None:
        try:
            config = dataclasses.replace(config, rack=node_rack(os.environ))
        except RackLookupError as error:
            log.error("cannot learn this broker's rack", extra={"error": str(error)})
            return 1
    try:
        asyncio.run(serve(config))
    except OSError as error:
        # Typically a listener address in use or a data directory we may not write.
        log.error("broker failed to start or stop", extra={"error": str(error)})
        return 1
    return 0

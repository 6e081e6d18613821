"""``brook-broker``: run one broker until SIGTERM or SIGINT, then stop it cleanly.

A clean stop matters: the broker flushes and closes its segments, so the next start
needs no recovery scan and no acknowledged record is lost.

A stop must also happen whatever the broker is doing. A signal handler of the event
loop runs only when the loop gets its turn, and one installed with ``signal.signal``
only in the main thread between two bytecodes, so neither runs while the loop is held
up, least of all inside one long call into C. So the stop signals are blocked in every
thread and taken by a thread of their own with ``signal.sigwait``: the first one asks
the loop to stop the broker, and if the process still runs ``--shutdown-timeout-ms``
later, that thread ends it with ``os._exit`` and a log line saying so (the next start
then recovers the logs as after a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

from .allocator import keep_freed_buffers
from .broker import Broker
from .config import BrokerConfig, load_config
from .logs import configure_logging
from .rack import RackLookupError, node_rack

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
UNCLEAN_EXIT = 1
"""The exit code when the broker did not stop within its shutdown timeout."""


def block_stop_signals() -> None:
    """Keep SIGTERM and SIGINT from every thread but the one ``watch_stop_signals`` starts;
    call it before any thread starts, since threads take the mask of their creator."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def watch_stop_signals(stop: Callable[[], None], timeout_s: float) -> threading.Thread:
    """At the first stop signal call ``stop`` (from this thread); exit the process
    ``timeout_s`` seconds later if it is still running. Later signals change nothing."""

    def watch() -> None:
        signum = signal.sigwait(STOP_SIGNALS)
        name = signal.Signals(signum).name
        log.info("stopping broker", extra={"signal": name})
        stop()
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            signal.sigtimedwait(STOP_SIGNALS, left)
        log.critical(
            "broker did not stop in time after a stop signal; exiting without a clean stop",
            extra={"signal": name, "shutdown_timeout_ms": round(timeout_s * 1000)},
        )
        os._exit(UNCLEAN_EXIT)

    thread = threading.Thread(target=watch, name="stop signals", daemon=True)
    thread.start()
    return thread


async def serve(config: BrokerConfig) -> None:
    """Start the broker, wait for a stop signal, stop the broker."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stop() -> None:
        # RuntimeError: the loop has closed, so the broker has stopped already.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stopping.set)

    watch_stop_signals(stop, config.shutdown_timeout_ms / 1000)
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
    keep_freed_buffers()
    block_stop_signals()
    try:
        asyncio.run(serve(config))
    except OSError as error:
        # Typically a listener address in use or a data directory we may not write.
        log.error("broker failed to start or stop", extra={"error": str(error)})
        return 1
    return 0

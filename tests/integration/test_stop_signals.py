"""SIGTERM stops a broker within ``--shutdown-timeout-ms`` whatever its event loop does.

A blocked event loop cannot be made from outside a real broker, so a small program runs
the broker's own signal handling (``brook_broker.main``) around a loop that a task
holds up: in Python code (as placing 2**31 - 1 partitions did), or in a blocking system
call, where a handler of the loop never runs and one of ``signal.signal`` waits for the
call to end. A real broker is also stopped with SIGTERM, to show that a free loop still
stops cleanly and at once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .brokers import running_broker

TIMEOUT_MS = 1000
EXIT_BOUND_S = 5.0
"""Generous for a loaded machine: the process must be gone within this long of SIGTERM."""

_PROGRAM = textwrap.dedent(
    """
    import asyncio, sys, time
    from brook_broker.logs import configure_logging
    from brook_broker.main import block_stop_signals, watch_stop_signals

    BLOCKS = {
        "python": "while True: pass",
        "syscall": "time.sleep(600)",
        "none": "pass",
    }

    async def serve(block: str) -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        timeout_s = float(sys.argv[2])
        watch_stop_signals(lambda: loop.call_soon_threadsafe(stopping.set), timeout_s)
        print("ready", flush=True)
        await asyncio.sleep(0.2)
        exec(BLOCKS[block])
        await stopping.wait()

    configure_logging("INFO", static={"node": 0})
    block_stop_signals()
    asyncio.run(serve(sys.argv[1]))
    """
)


def _stop(block: str, tmp_path: Path) -> tuple[int, float, str]:
    """Run the program with ``block`` in its loop, SIGTERM it once the loop is held up;
    returns its exit code, the seconds it took to exit, and its log."""
    script = tmp_path / "blocked_loop.py"
    script.write_text(_PROGRAM)
    process = subprocess.Popen(
        [sys.executable, str(script), block, str(TIMEOUT_MS / 1000)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the block has begun
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=EXIT_BOUND_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"SIGTERM did not end a loop blocked in {block}")
        took = time.monotonic() - sent
        assert process.stderr is not None
        return code, took, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=EXIT_BOUND_S)


@pytest.mark.parametrize("block", ["python", "syscall"])
def test_sigterm_ends_a_blocked_loop_after_the_shutdown_timeout(block: str, tmp_path: Path) -> None:
    code, took, log = _stop(block, tmp_path)
    assert code == 1
    assert TIMEOUT_MS / 1000 - 0.05 <= took < EXIT_BOUND_S
    assert "level=critical" in log
    assert "exiting without a clean stop" in log
    assert "shutdown_timeout_ms=1000" in log
    assert "signal=SIGTERM" in log


def test_sigterm_stops_a_free_loop_at_once(tmp_path: Path) -> None:
    code, took, log = _stop("none", tmp_path)
    assert code == 0
    assert took < TIMEOUT_MS / 1000
    assert "exiting without a clean stop" not in log


def test_sigterm_stops_a_broker_cleanly(tmp_path: Path) -> None:
    with running_broker(tmp_path, "--shutdown-timeout-ms", "20000", "--log-level", "INFO") as b:
        process = b.process
        assert process is not None
        sent = time.monotonic()
        assert b.stop(timeout=EXIT_BOUND_S * 2) == 0
        assert time.monotonic() - sent < EXIT_BOUND_S * 2
    log = b.log_path.read_text()
    assert "broker stopped" in log
    assert "exiting without a clean stop" not in log

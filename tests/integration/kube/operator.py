"""The real operator (``brook-operator``) as a process against the harness's API server."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from brook_cli import local

from .harness import Kube

STOP_TIMEOUT_S = 15.0


class OperatorProcess:
    """``brook-operator`` with ``KUBECONFIG`` pointing at the harness; its output in a log."""

    def __init__(self, kube: Kube, env: Mapping[str, str] | None = None) -> None:
        self.kube = kube
        self.env = dict(env or {})
        self.log_path = kube.root / "operator.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kube.kubeconfig),
            "BROOK_OPERATOR_METRICS_PORT": "0",
            "BROOK_OPERATOR_HEALTH_PORT": "0",
            "BROOK_OPERATOR_STATUS_INTERVAL": "2",
            "BROOK_OPERATOR_LOG_LEVEL": "INFO",
            **self.env,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["brook-operator"],
                env=env,
                cwd=self.kube.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                process_group=0,
                preexec_fn=local._die_with_parent,
            )
        time.sleep(0.5)
        if self.process.poll() is not None:
            raise AssertionError(
                f"brook-operator {local.describe_exit(self.process.returncode)}:\n{self.log_tail()}"
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, a bounded wait, then SIGKILL; the exit code (None when killed)."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                return process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return None
        return process.returncode

    def log_tail(self, lines: int = 60) -> str:
        path: Path = self.log_path
        if not path.exists():
            return "(no operator log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

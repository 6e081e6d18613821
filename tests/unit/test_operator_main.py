"""``brook-operator`` started where no cluster can be reached: one clear line, exit 2,
instead of Kopf retrying its startup every minute."""

from __future__ import annotations

from pathlib import Path

import pytest
from brook_operator import main


def test_no_cluster_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for variable in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    assert main.main([]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("brook-operator: no Kubernetes cluster to run against: not in a pod")

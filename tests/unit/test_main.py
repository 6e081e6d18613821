"""``brook-broker`` refuses bad settings before it starts anything."""

from __future__ import annotations

import pytest
from brook_broker.main import main


def test_unknown_log_level_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--log-level", "LOUD"]) == 2
    assert "--log-level: unknown log level 'LOUD'" in capsys.readouterr().err


def test_bad_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--listen", "nowhere"])
    assert exit_info.value.code == 2
    assert "--listen" in capsys.readouterr().err

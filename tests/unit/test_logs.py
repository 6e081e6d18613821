"""Log lines are logfmt: fixed keys first, extras as key=value, values quoted when needed."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from brook_broker.logs import configure_logging, format_value, parse_level


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    output = io.StringIO()
    yield output
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_line_has_fixed_keys_static_pairs_and_extras(stream: io.StringIO) -> None:
    configure_logging("INFO", static={"node": 3}, stream=stream)
    logging.getLogger("brook_broker.test").info(
        "segment rolled", extra={"topic": "orders", "partition": 0}
    )
    line = stream.getvalue().rstrip("\n")
    keys = [pair.split("=", 1)[0] for pair in line.split(" ") if "=" in pair]
    assert keys[:5] == ["ts", "level", "node", "logger", "msg"]
    assert line.split(" ")[0].endswith("Z")
    assert ' level=info node=3 logger=brook_broker.test msg="segment rolled" ' in line
    assert line.endswith(" topic=orders partition=0")


def test_level_filters_quiet_by_default(stream: io.StringIO) -> None:
    configure_logging("warning", stream=stream)
    logger = logging.getLogger("brook_broker.test")
    logger.info("lifecycle")
    logger.warning("problem")
    assert "lifecycle" not in stream.getvalue()
    assert "msg=problem" in stream.getvalue()


def test_exception_goes_into_one_line(stream: io.StringIO) -> None:
    configure_logging("ERROR", stream=stream)
    try:
        raise RuntimeError("disk full")
    except RuntimeError:
        logging.getLogger("brook_broker.test").exception("append failed")
    output = stream.getvalue()
    assert output.count("\n") == 1
    assert "error=" in output and "RuntimeError: disk full" in output


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        (42, "42"),
        ("", '""'),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("line\nbreak", '"line\\nbreak"'),
    ],
)
def test_format_value(value: object, expected: str) -> None:
    assert format_value(value) == expected


def test_parse_level() -> None:
    assert parse_level("debug") == logging.DEBUG
    with pytest.raises(ValueError, match="unknown log level"):
        parse_level("LOUD")
    with pytest.raises(ValueError):
        parse_level("NOTSET")

"""Log lines in logfmt (``ts=... level=... logger=... msg="..." key=value``) on stderr.

One line per event, with ``key=value`` pairs that log collectors can index without a
parser of our own. Values for the pairs come from ``extra={...}`` on the logging call.
Quiet by default: the level comes from ``--log-level`` (WARNING unless set).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
) | {"message", "asctime", "taskName"}


def format_value(value: object) -> str:
    """Quote a value when logfmt needs it (spaces, quotes, ``=``, or empty)."""
    text = str(value)
    if text and not any(character in text for character in ' "=\\\n\t'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped.replace("\t", "\\t") + '"'


class LogfmtFormatter(logging.Formatter):
    """Formats a record as one logfmt line; ``static`` pairs go on every line (e.g. node)."""

    def __init__(self, static: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self._static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        timestamp = datetime.fromtimestamp(record.created, UTC)
        pairs: dict[str, object] = {
            "ts": timestamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            **self._static,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                pairs[key] = value
        if record.exc_info:
            pairs["error"] = self.formatException(record.exc_info)
        return " ".join(f"{key}={format_value(value)}" for key, value in pairs.items())


def parse_level(name: str) -> int:
    """The numeric level for ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR`` (any case)."""
    level = logging.getLevelNamesMapping().get(name.strip().upper())
    if level is None or level == logging.NOTSET:
        raise ValueError(f"unknown log level {name!r}: use DEBUG, INFO, WARNING or ERROR")
    return level


def configure_logging(
    level: str, *, static: Mapping[str, Any] | None = None, stream: TextIO | None = None
) -> None:
    """Send every logger's records at ``level`` and above to ``stream`` (stderr) as logfmt."""
    numeric_level = parse_level(level)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LogfmtFormatter(static))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)

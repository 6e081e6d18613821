"""Kafka's rules for topic names."""

from __future__ import annotations

import pytest
from brook_broker.metadata.errors import ApiError
from brook_broker.metadata.topics import validate_topic_name
from kio.schema.errors import ErrorCode


def refused(code: ErrorCode, call, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as raised:
        call(*args, **kwargs)
    assert raised.value.code == code, raised.value.message
    return raised.value.message


@pytest.mark.parametrize("name", ["a", "A-b_c.9", "x" * 249, "...", "_"])
def test_legal_topic_names(name: str) -> None:
    validate_topic_name(name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "can't be empty"),
        (".", 'cannot be "." or ".."'),
        ("..", 'cannot be "." or ".."'),
        ("x" * 250, "can't be longer than 249 characters"),
        ("with space", "contains a character other than ASCII alphanumerics"),
        ("slash/", "contains a character other than"),
        ("ünicode", "contains a character other than"),
    ],
)
def test_illegal_topic_names(name: str, message: str) -> None:
    assert message in refused(ErrorCode.invalid_topic_exception, validate_topic_name, name)

"""The SASL PLAIN session of a connection: what it answers, and when it closes it."""

from __future__ import annotations

from typing import Any

import pytest
from brook_broker.protocol import codec
from brook_broker.protocol.client import decode_response
from brook_broker.protocol.sasl import (
    AuthenticationFailed,
    PlainAuthenticator,
    PlainCredentials,
    SaslSession,
)
from kio.index import load_request_schema
from kio.schema.errors import ErrorCode

from tests.support.entities import build

HANDSHAKE, AUTHENTICATE, METADATA, API_VERSIONS = 17, 36, 3, 18
BROKER = PlainCredentials("broker", "s3cret")


def request(api_key: int, version: int, body: dict[str, Any]) -> codec.Request:
    body_type = load_request_schema(api_key, version)
    return codec.Request(api_key, version, 7, "test", build(body_type, body))


def session() -> SaslSession:
    return PlainAuthenticator({BROKER.username: BROKER.password}).session()


def refusal(failed: pytest.ExceptionInfo[AuthenticationFailed], api_key: int, version: int) -> Any:
    assert failed.value.response is not None
    return decode_response(api_key, version, failed.value.response[4:])


@pytest.mark.parametrize("version", [0, 1, 2])
def test_the_right_password_authenticates(version: int) -> None:
    sasl = session()
    assert sasl.answer(request(API_VERSIONS, 3, {})) is None, "ApiVersions goes to the dispatcher"
    handshake = sasl.answer(request(HANDSHAKE, 1, {"mechanism": "PLAIN"}))
    assert handshake == {"error_code": ErrorCode.none, "mechanisms": ["PLAIN"]}
    answer = sasl.answer(request(AUTHENTICATE, version, {"auth_bytes": BROKER.token()}))
    assert answer is not None and answer["error_code"] == ErrorCode.none
    assert sasl.principal == "broker"
    assert sasl.answer(request(METADATA, 12, {"topics": None})) is None
    again = sasl.answer(request(HANDSHAKE, 1, {"mechanism": "PLAIN"}))
    assert again is not None and again["error_code"] == ErrorCode.illegal_sasl_state


@pytest.mark.parametrize(
    "token",
    [
        PlainCredentials("broker", "s3cret!").token(),
        PlainCredentials("someone", "s3cret").token(),
        b"broker\0s3cret",
        b"admin\0broker\0s3cret",  # an authorization id other than the user
    ],
)
def test_a_wrong_token_is_answered_then_the_connection_closed(token: bytes) -> None:
    sasl = session()
    sasl.answer(request(HANDSHAKE, 1, {"mechanism": "PLAIN"}))
    with pytest.raises(AuthenticationFailed) as failed:
        sasl.answer(request(AUTHENTICATE, 2, {"auth_bytes": token}))
    answer = refusal(failed, AUTHENTICATE, 2)
    assert answer.error_code == ErrorCode.sasl_authentication_failed
    assert answer.error_message.startswith("Authentication failed")
    assert sasl.principal is None


def test_requests_before_authentication_close_the_connection() -> None:
    sasl = session()
    with pytest.raises(AuthenticationFailed) as failed:
        sasl.answer(request(METADATA, 12, {"topics": None}))
    assert failed.value.response is None
    sasl = session()
    with pytest.raises(AuthenticationFailed):  # a token needs a handshake first
        sasl.answer(request(AUTHENTICATE, 2, {"auth_bytes": BROKER.token()}))


def test_an_unsupported_mechanism_is_answered_with_plain() -> None:
    with pytest.raises(AuthenticationFailed) as failed:
        session().answer(request(HANDSHAKE, 1, {"mechanism": "SCRAM-SHA-512"}))
    answer = refusal(failed, HANDSHAKE, 1)
    assert (answer.error_code, answer.mechanisms) == (
        ErrorCode.unsupported_sasl_mechanism,
        ("PLAIN",),
    )


def test_after_a_handshake_v0_the_token_comes_bare() -> None:
    sasl = session()
    sasl.answer(request(HANDSHAKE, 0, {"mechanism": "PLAIN"}))
    assert sasl.expects_raw_token
    assert sasl.raw_token(BROKER.token()) == b""
    assert sasl.principal == "broker" and not sasl.expects_raw_token
    sasl = session()
    sasl.answer(request(HANDSHAKE, 0, {"mechanism": "PLAIN"}))
    with pytest.raises(AuthenticationFailed):
        sasl.raw_token(PlainCredentials("broker", "wrong").token())

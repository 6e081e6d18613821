"""SASL authentication of a connection, as Kafka does it (KIP-43, KIP-152), with PLAIN.

A listener that authenticates gives each connection a :class:`SaslSession`. Until it
completes, the connection may send only ApiVersions, SaslHandshake (which picks the
mechanism) and then the mechanism's token: in a SaslAuthenticate request after a
handshake v1, or as a bare size-prefixed frame after a handshake v0. Anything else
closes the connection, and so does a wrong password, after a SASL_AUTHENTICATION_FAILED
answer. Once complete, the session names the connection's principal; the requests that
follow are the dispatcher's. PLAIN sends the password in the clear: it protects against
clients that do not know it, not against one that can read the traffic.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kio.schema.errors import ErrorCode

from .codec import API_VERSIONS_KEY, Request, encode_response

SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
SASL_VERSIONS: Mapping[int, tuple[int, int]] = {SASL_HANDSHAKE: (0, 1), SASL_AUTHENTICATE: (0, 2)}
PLAIN = "PLAIN"
_INVALID = "Authentication failed: Invalid username or password"
SASL_SERVER_MAX_RECEIVE_SIZE = 512 * 1024
"""Kafka's ``sasl.server.max.receive.size`` (its default): the largest frame a connection
may send before it has authenticated; a PLAIN token is a few hundred bytes."""


@dataclass(frozen=True)
class PlainCredentials:
    username: str
    password: str = field(repr=False)

    def token(self) -> bytes:
        """The PLAIN token (RFC 4616) without an authorization id."""
        return b"\0" + self.username.encode() + b"\0" + self.password.encode()


class AuthenticationFailed(Exception):
    """Close the connection, after sending ``response`` (an encoded frame) if there is one."""

    def __init__(self, message: str, response: bytes | None = None) -> None:
        super().__init__(message)
        self.response = response


class PlainAuthenticator:
    """The users a listener accepts, with their passwords."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = {name.encode(): password.encode() for name, password in users.items()}

    def session(self) -> SaslSession:
        return SaslSession(self)

    def check(self, token: bytes) -> str:
        """The user a PLAIN token proves, else AuthenticationFailed. The password is
        compared in constant time, also for an unknown user."""
        parts = token.split(b"\0")
        if len(parts) != 3:
            raise AuthenticationFailed("Authentication failed: Invalid SASL/PLAIN token")
        authorization_id, username, password = parts
        matches = hmac.compare_digest(password, self._users.get(username, b""))
        if not matches or username not in self._users:
            raise AuthenticationFailed(_INVALID)
        if authorization_id and authorization_id != username:
            raise AuthenticationFailed(
                "Authentication failed: Client requested an authorization id that is "
                "different from username"
            )
        return username.decode(errors="replace")


class SaslSession:
    """The authentication state of one connection: handshake, then token, then done."""

    def __init__(self, authenticator: PlainAuthenticator) -> None:
        self._authenticator = authenticator
        self._handshaken = False
        self.expects_raw_token = False
        """After a handshake v0 the token comes as a bare frame, not a Kafka request."""
        self.principal: str | None = None
        """The authenticated user; None until authentication succeeds."""

    def answer(self, request: Request) -> Mapping[str, Any] | None:
        """The answer to a request that belongs to authentication, or None for one the
        dispatcher answers. Raises AuthenticationFailed to close the connection."""
        key = request.api_key
        if self.principal is not None:
            if key in SASL_VERSIONS:
                return _error(key, ErrorCode.illegal_sasl_state, "Already authenticated")
            return None
        if key == API_VERSIONS_KEY:
            return None
        if key == SASL_HANDSHAKE and not self._handshaken:
            if request.body.mechanism != PLAIN:
                raise AuthenticationFailed(
                    f"unsupported SASL mechanism {request.body.mechanism!r}",
                    encode_response(
                        request,
                        {"error_code": ErrorCode.unsupported_sasl_mechanism, "mechanisms": [PLAIN]},
                    ),
                )
            self._handshaken = True
            self.expects_raw_token = request.api_version == 0
            return {"error_code": ErrorCode.none, "mechanisms": [PLAIN]}
        if key == SASL_AUTHENTICATE and self._handshaken:
            try:
                self.principal = self._authenticator.check(bytes(request.body.auth_bytes))
            except AuthenticationFailed as failed:
                body = _error(key, ErrorCode.sasl_authentication_failed, str(failed))
                raise AuthenticationFailed(str(failed), encode_response(request, body)) from None
            return {"error_code": ErrorCode.none, "auth_bytes": b""}
        raise AuthenticationFailed(f"API key {key} before SASL authentication completed")

    def raw_token(self, token: bytes) -> bytes:
        """Check a bare token (after a handshake v0); returns the bare answer to send."""
        self.expects_raw_token = False
        self.principal = self._authenticator.check(token)
        return b""


def _error(key: int, code: ErrorCode, message: str) -> dict[str, Any]:
    if key == SASL_HANDSHAKE:
        return {"error_code": code, "mechanisms": [PLAIN]}
    return {"error_code": code, "error_message": message, "auth_bytes": b""}

"""API keys, the one OpenAI-shaped error body, body-size limits and request ids of the served app.

- **Keys** (:class:`KeyRing`): read from an environment variable (comma-separated) or a file (one per
  line), kept only as SHA-256 digests, and a presented Bearer token is compared with *every* digest by
  ``hmac.compare_digest`` on bytes, without an early exit. Hashing first makes the comparison
  fixed-length and bytes-only, so a non-ASCII token is a plain mismatch (a naive ``compare_digest`` on
  ``str`` raises ``TypeError`` there, which would be a 500), and the time does not depend on which key
  matched. Auth can only be switched off explicitly, and never on a non-loopback host.
- **Errors** (:func:`error_response`): ``{"error": {"message", "type", "param", "code"}}`` with a string
  ``code``, as OpenAI sends it, for every status; no stack trace ever reaches a client.
- **Body size** (:class:`BodyLimit`): ``Content-Length`` is checked first and the bytes actually
  received are counted too (a chunked body has no length), so an oversized body is refused with a 413
  before it is parsed.
- **Request ids** (:func:`request_id_of`): a client's ``x-request-id`` is kept only when short and made
  of safe characters (it goes into logs), else replaced by a random one.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "KeyRing",
    "AuthSettings",
    "APIError",
    "error_body",
    "error_response",
    "is_loopback",
    "request_id_of",
    "BodyLimit",
]

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An error answered with the OpenAI body; raised by routes and limits."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = dict(headers or {})


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict:
    """The OpenAI error object for ``status``."""
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code or str(status),
        }
    }


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
):
    """A JSONResponse with :func:`error_body`; 5xx and timeouts tell SDKs not to retry an ensemble."""
    from fastapi.responses import JSONResponse

    headers = dict(headers or {})
    if status >= 500 or status == 408:
        headers.setdefault("x-should-retry", "false")
    return JSONResponse(
        error_body(status, message, code=code, param=param), status_code=status, headers=headers
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts local connections (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AuthSettings:
    """Where the keys come from (plain values, so the settings pickle into every ingress replica)."""

    def __init__(self, *, api_keys_env: str, api_keys_file: str, disabled: bool, host: str) -> None:
        self.api_keys_env, self.api_keys_file = api_keys_env, api_keys_file
        self.disabled, self.host = disabled, host


class KeyRing:
    """SHA-256 digests of the accepted API keys, checked in constant time over all of them."""

    def __init__(self, keys: Iterable[str], *, disabled: bool = False) -> None:
        self._digests = [hashlib.sha256(k.encode("utf-8")).digest() for k in keys if k]
        self.disabled = disabled
        if not disabled and not self._digests:
            raise ValueError(
                "no API key configured: set the keys' environment variable (comma-separated) or "
                "auth.api_keys_file, or disable auth explicitly with auth.disabled=true on a loopback host"
            )

    def __len__(self) -> int:
        return len(self._digests)

    def digests(self) -> list[bytes]:
        """The SHA-256 digests (what the replicas receive instead of the keys)."""
        return list(self._digests)

    @classmethod
    def from_digests(cls, digests: Iterable[bytes], *, disabled: bool = False) -> KeyRing:
        ring = cls([], disabled=True)
        ring._digests, ring.disabled = [bytes(d) for d in digests], disabled
        if not disabled and not ring._digests:
            raise ValueError("no API key digests given and auth is not disabled")
        return ring

    @classmethod
    def load(cls, *, api_keys_env: str, api_keys_file: str, disabled: bool, host: str) -> KeyRing:
        """Keys from ``$api_keys_env`` and ``api_keys_file``; auth off only if asked and on loopback."""
        if disabled:
            if not is_loopback(host):
                raise ValueError(
                    f"auth.disabled=true is refused on host {host!r}: only a loopback host "
                    "(127.0.0.1, ::1, localhost) may serve without API keys"
                )
            return cls([], disabled=True)
        keys: list[str] = []
        if api_keys_env:
            keys += [k.strip() for k in os.environ.get(api_keys_env, "").split(",") if k.strip()]
        if api_keys_file:
            path = Path(api_keys_file)
            if not path.is_file():
                raise ValueError(f"auth.api_keys_file {api_keys_file!r} does not exist")
            keys += [
                line.strip()
                for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ]
        return cls(keys)

    def check(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries an accepted Bearer token (scheme case-insensitive)."""
        if self.disabled:
            return True
        if not authorization:
            return False
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        presented = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        match = False
        for digest in self._digests:  # no early exit: the time does not say which key matched
            match |= hmac.compare_digest(presented, digest)
        return match


def request_id_of(headers: Any) -> str:
    """The client's ``x-request-id`` when safe to log (``[A-Za-z0-9._:-]``, up to 64), else a new one."""
    given = headers.get("x-request-id") if headers is not None else None
    if given and _SAFE_ID.match(given):
        return given
    return uuid.uuid4().hex


class BodyLimit:
    """ASGI middleware: 413 (OpenAI body) for a body over ``max_bytes``, declared or streamed."""

    def __init__(self, app, *, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                await _send_error(send, 400, "invalid Content-Length header", "invalid_content_length")
                return
            if too_big:
                await _send_error(send, 413, self._message(), "request_too_large")
                return
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_error(send, 413, self._message(), "request_too_large")

    def _message(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes"


class _TooLarge(Exception):
    pass


async def _send_error(send, status: int, message: str, code: str) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})

"""The dashboard's guard: token, JSON-only mutations, same-origin posts, security headers.

A plain ASGI middleware (not `BaseHTTPMiddleware`) so Server-Sent Event streams pass through
unbuffered. With a token, every request must carry it as `Authorization: Bearer TOKEN` or in
the `loom_token` cookie, which visiting any page with `?token=TOKEN` sets (HttpOnly,
SameSite=Strict) before redirecting to the same page without it. Tokens are compared in
constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "loom_token"
TOKEN_ENV = "LOOM_WEB_TOKEN"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
"""Everything from this server only: no CDN, no inline script, nothing framed or posted away.
(Mermaid's SVGs and Swagger UI set inline styles.)"""

SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the dashboard on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    """The name of a Host header without its port (`[::1]:8000` -> `::1`)."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def same_token(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


class Guard:
    """Wraps the app: authentication, mutation rules and headers on every response."""

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self.token = token or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        send = _with_security_headers(send)
        if self.token is None and not is_loopback(_host_name(headers.get("host", ""))):
            # Open only on loopback: a page whose name was re-bound to 127.0.0.1 (DNS
            # rebinding) would otherwise be same-origin with this dashboard.
            await _refuse(scope, send, 403, "without a token only loopback host names are served")
            return
        if self.token is not None:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            if method == "GET" and "token" in query:
                await self._login(scope, query, send)
                return
            if not self._carries_token(headers):
                await _refuse(
                    scope,
                    send,
                    401,
                    "a token is required: send 'Authorization: Bearer TOKEN' "
                    "or open /?token=TOKEN once in the browser",
                )
                return
        if method not in SAFE_METHODS:
            refusal = _mutation_refusal(headers)
            if refusal is not None:
                await _refuse(scope, send, *refusal)
                return
        await self.app(scope, receive, send)

    def _carries_token(self, headers: dict[str, str]) -> bool:
        assert self.token is not None
        authorization = headers.get("authorization", "")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and same_token(value.strip(), self.token):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header carries no token
            return False
        morsel = cookie.get(COOKIE)
        return same_token(None if morsel is None else morsel.value, self.token)

    async def _login(self, scope: Scope, query: dict[str, str], send: Send) -> None:
        assert self.token is not None
        if not same_token(query.get("token"), self.token):
            await _refuse(scope, send, 401, "wrong token")
            return
        rest = urlencode({k: v for k, v in query.items() if k != "token"})
        location = scope["path"] + (f"?{rest}" if rest else "")
        cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [(b"location", location.encode()), (b"set-cookie", cookie.encode())],
            }
        )
        await send({"type": "http.response.body", "body": b""})


def _mutation_refusal(headers: dict[str, str]) -> tuple[int, str] | None:
    """Why a POST is refused: not JSON (415), or sent by a page of another origin (403).

    A cross-site HTML form can only send form or text content types, so requiring
    `application/json` already stops it; the Origin check also stops scripted posts.
    """
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return 415, (
            f"mutations take a JSON body: send 'Content-Type: application/json' "
            f"(got {content_type or 'none'!r})"
        )
    origin = headers.get("origin")
    if origin and origin != "null":
        if urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
            return 403, f"cross-origin request from {origin!r} refused"
    elif origin == "null":
        return 403, "cross-origin request from an opaque origin refused"
    return None


async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message, "status": status}).encode()
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    if status == 401 and not scope["path"].startswith("/api"):
        page = (
            "<!doctype html><meta charset=utf-8><title>loom web: token required</title>"
            "<h1>Token required</h1><p>Open this dashboard with <code>?token=TOKEN</code> "
            "once (a cookie keeps it), or send <code>Authorization: Bearer TOKEN</code>.</p>"
        )
        body = page.encode()
        headers = [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store")]
    headers.append((b"content-length", str(len(body)).encode()))
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="loom"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _with_security_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
        await send(message)

    return wrapped

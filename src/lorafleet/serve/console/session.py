"""Console sessions and CSRF tokens: pure functions over one per-gateway secret, no I/O.

A session cookie is `SID.EXPIRES.SUBJECT.MAC`, where MAC is an HMAC-SHA256 of the rest under the
gateway's secret, so the gateway keeps no session table and a forged or edited cookie is refused.
`SUBJECT` says who logged in (`admin:<key id>`, or `open` when the gateway runs without auth), so
each request can check that the admin key behind a session still exists. The CSRF token is another
HMAC, of the session id: a page gets it in a meta tag and every state-changing request sends it
back in the `X-CSRF-Token` header, which a cross-site form or script cannot do.

The secret is made when the gateway starts: a restart, or another gateway behind the same load
balancer, asks for a new login (a new session is one form away; a shared secret would be one more
thing to configure and leak).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

SESSION_COOKIE = "lorafleet_console"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 12 * 3600  # a working day; the cookie's Max-Age says the same
OPEN_SUBJECT = "open"  # the subject of every session on a gateway without authentication
_SUBJECT = re.compile(r"[A-Za-z0-9:_\-]{1,80}")


@dataclass(frozen=True)
class Session:
    """A verified console session."""

    session_id: str
    expires_at: int  # unix seconds
    subject: str


class SessionSigner:
    """Issues and checks session cookies and CSRF tokens under one secret."""

    def __init__(self, secret: bytes):
        if len(secret) < 32:
            raise ValueError("a session secret needs at least 32 bytes")
        self._secret = secret

    @classmethod
    def fresh(cls) -> SessionSigner:
        return cls(secrets.token_bytes(32))

    def issue(self, subject: str, now: float, ttl_s: int = SESSION_TTL_S) -> str:
        """A new session cookie value for `subject` (letters, digits, `:_-`), valid for `ttl_s`."""
        if not _SUBJECT.fullmatch(subject):
            raise ValueError(f"session subject {subject!r} must be 1-80 of A-Z a-z 0-9 : _ -")
        payload = f"{secrets.token_urlsafe(18)}.{int(now) + ttl_s}.{subject}"
        return f"{payload}.{self._mac('session', payload)}"

    def read(self, cookie: str | None, now: float) -> Session | None:
        """The session a cookie carries, or None when it is missing, malformed, forged or expired."""
        if not cookie:
            return None
        parts = cookie.split(".")
        if len(parts) != 4:
            return None
        session_id, expires, subject, mac = parts
        if not hmac.compare_digest(mac, self._mac("session", f"{session_id}.{expires}.{subject}")):
            return None
        if not expires.isdigit() or int(expires) <= now:
            return None
        return Session(session_id, int(expires), subject)

    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf", session.session_id)

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(token, self.csrf_token(session))  # type: ignore[arg-type]

    def _mac(self, purpose: str, text: str) -> str:
        return hmac.new(self._secret, f"{purpose}\x1f{text}".encode(), hashlib.sha256).hexdigest()

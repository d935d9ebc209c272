"""Who may use the gateway: holders of the suite's client token, and browsers logged in
once with a one-time code (docs/dashboard.md, "Logging in").

- `agentgate dashboard` asks the gateway for a code (`POST /auth/code` with the token as
  `authorization: Bearer`); the code is good once, for CODE_TTL_SECONDS.
- The browser opens `/login?code=...`; the gateway spends the code, sets a session cookie
  (HttpOnly, SameSite=Strict) and redirects to `/`, so what stays in the address bar's
  history is a spent code, never the token.
- A session is `<expiry>.<nonce>.<HMAC(token, expiry, nonce)>`: checked without state, so it
  survives a gateway restart, and void once the suite's token changes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

COOKIE = "agentgate_session"
CODE_TTL_SECONDS = 120
SESSION_TTL_SECONDS = 7 * 24 * 3600
#: Codes issued and not yet spent, at most (older ones are dropped first).
MAX_PENDING_CODES = 100


class Sessions:
    """One-time login codes and session cookies for the token `token`."""

    def __init__(self, token: str, clock: Callable[[], float] = time.time):
        self._key = token.encode()
        self._clock = clock
        self._codes: dict[str, float] = {}

    def token_ok(self, bearer: str | None) -> bool:
        """True when `authorization` is `Bearer <the suite's token>` (compared in constant time)."""
        if not bearer or not bearer.startswith("Bearer "):
            return False
        return hmac.compare_digest(bearer.removeprefix("Bearer ").strip().encode(), self._key)

    def issue_code(self) -> str:
        """A new one-time login code."""
        now = self._clock()
        self._codes = {code: expiry for code, expiry in self._codes.items() if expiry > now}
        while len(self._codes) >= MAX_PENDING_CODES:
            self._codes.pop(next(iter(self._codes)))
        code = secrets.token_urlsafe(24)
        self._codes[code] = now + CODE_TTL_SECONDS
        return code

    def spend_code(self, code: str) -> str | None:
        """A new session for a valid code (which is spent), None otherwise."""
        expiry = self._codes.pop(code, None)
        if expiry is None or expiry <= self._clock():
            return None
        return self._session(int(self._clock()) + SESSION_TTL_SECONDS, secrets.token_hex(16))

    def session_ok(self, cookie: str | None) -> bool:
        """True for a session this token signed that has not expired."""
        if not cookie:
            return False
        expiry, _, nonce = cookie.partition(".")
        nonce = nonce.partition(".")[0]
        if not expiry.isdigit() or int(expiry) <= self._clock():
            return False
        return hmac.compare_digest(cookie.encode(), self._session(int(expiry), nonce).encode())

    def _session(self, expiry: int, nonce: str) -> str:
        signature = hmac.new(self._key, f"dashboard-session\0{expiry}\0{nonce}".encode(), hashlib.sha256).hexdigest()
        return f"{expiry}.{nonce}.{signature}"

"""Who may look and who may act: the shared token, operator sessions, CSRF and Origin.

* Acting (every POST but the login itself) needs a session. The login form takes the
  shared token (`AOL_DASHBOARD_TOKEN` or `AOL_DASHBOARD_TOKEN_FILE`) and the operator's
  name; the name is recorded with every change made in that session.
* Without a token there are no sessions: the dashboard is read-only and serves loopback
  only (`check_bind` refuses any other address at start-up).
* Looking without a session is allowed only when the server is bound to a loopback
  address and the client connects from loopback too.
* Every POST must come from this origin (the `Origin` header, else `Referer`, names this
  server's host), and carry the session's CSRF token in the form field `csrf` or the
  `X-CSRF-Token` header. The login form uses a double-submit cookie instead.

Sessions live in this process's memory: a restart logs everybody out.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
import unicodedata
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aol.errors import ConfigError

SESSION_COOKIE = "aol_session"
LOGIN_CSRF_COOKIE = "aol_login_csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL = 12 * 3600.0
OPERATOR_MAX_LENGTH = 64


def is_loopback(host: str | None) -> bool:
    """True for localhost, 127.0.0.0/8, ::1 and IPv4-mapped loopback."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without a token: anybody could act otherwise."""
    if token or is_loopback(host):
        return
    raise ConfigError(
        f"aol dashboard: refusing to serve on {host!r} (not a loopback address) without a "
        "token: set AOL_DASHBOARD_TOKEN, or AOL_DASHBOARD_TOKEN_FILE naming a secrets file, "
        "to a shared secret of at least 16 characters; or serve on 127.0.0.1 with --host"
    )


def token_matches(expected: str, given: str) -> bool:
    """Constant-time comparison; hashing first hides the expected length too."""
    a = hashlib.sha256(expected.encode("utf-8")).digest()
    b = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(a, b)


def same_secret(expected: str, given: str | None) -> bool:
    return given is not None and token_matches(expected, given)


def clean_operator(raw: str) -> str | None:
    """The operator's name as typed, trimmed; None when empty, too long or unprintable."""
    name = " ".join(raw.split())
    if not name or len(name) > OPERATOR_MAX_LENGTH:
        return None
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        return None
    return name


def same_origin(host: str | None, origin: str | None, referer: str | None) -> bool:
    """The request came from a page of this server: Origin (or Referer) names our Host.

    Only host and port are compared, so a TLS-terminating proxy in front does not matter.
    """
    if not host:
        return False
    source = origin if origin and origin != "null" else referer
    if not source:
        return False
    netloc = urlsplit(source).netloc
    return bool(netloc) and netloc.lower() == host.lower()


@dataclass(frozen=True, slots=True)
class Session:
    """One logged-in operator."""

    id: str
    operator: str
    csrf: str
    expires_at: float


@dataclass(slots=True)
class Sessions:
    """Operator sessions in memory, keyed by a random cookie value."""

    ttl: float = SESSION_TTL
    _by_id: dict[str, Session] = field(default_factory=dict)

    def create(self, operator: str) -> Session:
        self._prune()
        session = Session(
            id=secrets.token_urlsafe(32),
            operator=operator,
            csrf=secrets.token_urlsafe(32),
            expires_at=time.monotonic() + self.ttl,
        )
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        if session.expires_at <= time.monotonic():
            self._by_id.pop(session_id, None)
            return None
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._by_id.pop(session_id, None)

    def _prune(self) -> None:
        now = time.monotonic()
        for sid in [s.id for s in self._by_id.values() if s.expires_at <= now]:
            del self._by_id[sid]

"""Console sessions: an admin token swapped for an HttpOnly, ``SameSite=Strict`` cookie.

The cookie holds a random session id; Redis holds only its SHA-256
(``Keys.console_session``) with the client's name, the hash of the token it
logged in with and the session's CSRF token, for :data:`SESSION_TTL` seconds.
Every request re-checks that the token still exists, so ``tokens revoke``
ends the client's console sessions at once.

Why not Starlette's ``SessionMiddleware``: it keeps the session in a signed
cookie, which needs a signing secret (one more setting to share between API
processes) and cannot be revoked; a Redis record needs neither and the API
processes already share Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import redis

from worker.clients.tokens import token_hash
from worker.store.keys import Keys

COOKIE = "hatz_console"
#: Seconds a console session lasts (from login).
SESSION_TTL = 12 * 3600


@dataclass(frozen=True)
class Session:
    """A logged-in operator: the admin client's name and the session's CSRF token."""

    client: str
    csrf: str

    def csrf_ok(self, sent: str | None) -> bool:
        """Whether a form's CSRF token is this session's (constant-time)."""
        return bool(sent) and hmac.compare_digest(self.csrf, str(sent))


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """Console sessions in Redis."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    def create(self, client: str, token: str) -> str:
        """A new session for ``client`` (logged in with ``token``); returns the cookie value."""
        session_id = secrets.token_urlsafe(32)
        key = self.keys.console_session(_digest(session_id))
        with self.redis.pipeline() as pipe:
            pipe.hset(
                key,
                mapping={
                    "client": client,
                    "token_hash": token_hash(token),
                    "csrf": secrets.token_urlsafe(32),
                },
            )
            pipe.expire(key, SESSION_TTL)
            pipe.execute()
        return session_id

    def get(self, session_id: str | None) -> Session | None:
        """The live session of a cookie value; None when unknown, expired or revoked."""
        if not session_id or len(session_id) > 100:
            return None
        raw = self.redis.hgetall(self.keys.console_session(_digest(session_id)))
        record = {_text(k): _text(v) for k, v in raw.items()}
        if not record or not self.redis.exists(self.keys.client_token(record["token_hash"])):
            return None
        return Session(client=record["client"], csrf=record["csrf"])

    def delete(self, session_id: str | None) -> None:
        """End a session (logout)."""
        if session_id:
            self.redis.delete(self.keys.console_session(_digest(session_id)))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""Client tokens for the HTTP API: create (shown once), list, revoke, verify.

A token is 32 random bytes (``secrets``), so a plain SHA-256 of it is all that
is stored: a slow password hash (bcrypt, argon2) protects low-entropy secrets
people choose, and would only add milliseconds to every request here. A
stolen Redis dump yields no usable token.

Records live until ``hatz-worker tokens revoke NAME`` deletes them (a client
is configuration, not traffic: there is one per calling application). Create
and revoke are compare-and-sets (``WATCH``/``MULTI`` on the client's record),
so two racing ``create`` calls for one name make one client, and a revoke
removes the client and its token hash together.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from worker.errors import HatzError
from worker.store.keys import Keys

#: Every token starts with this, so a leaked one is recognisable (secret scanners, logs).
TOKEN_PREFIX = "hzw_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ClientExistsError(HatzError):
    """Raised when a client is created under a name that is already taken."""


@dataclass(frozen=True)
class Client:
    """The caller a valid token belongs to."""

    name: str
    admin: bool = False


@dataclass(frozen=True)
class ClientInfo:
    """A client as ``tokens list`` shows it (never its token)."""

    name: str
    admin: bool
    created_at: float


def token_hash(token: str) -> str:
    """The SHA-256 (hex) under which a token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def client_from_record(raw: str | bytes) -> Client:
    """The :class:`Client` a token's record (``P:token:<sha256>``) names."""
    record = json.loads(raw)
    return Client(name=str(record["name"]), admin=bool(record["admin"]))


def check_name(name: str) -> str:
    """``name`` if it is a valid client name; raises ValueError otherwise."""
    if not _NAME.match(name):
        raise ValueError(
            f"invalid client name {name!r}: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class ClientStore:
    """The HTTP API's clients and their token hashes, in Redis."""

    def __init__(
        self, client: redis.Redis, keys: Keys, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.redis = client
        self.keys = keys
        self.clock = clock

    def create(self, name: str, *, admin: bool = False) -> str:
        """Make a client; return its new token (the only time it is seen).

        Raises :class:`ClientExistsError` if the name is taken and ValueError
        for an invalid name.
        """
        check_name(name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_hash(token)
        record = json.dumps({"name": name, "admin": admin})
        now = self.clock()
        with self.redis.pipeline() as pipe:
            pipe.watch(self.keys.client(name))  # type: ignore[no-untyped-call]
            if pipe.exists(self.keys.client(name)):
                raise ClientExistsError(f"a client named {name!r} already exists")
            pipe.multi()
            pipe.hset(
                self.keys.client(name),
                mapping={"admin": int(admin), "token_hash": digest, "created_at": repr(now)},
            )
            pipe.set(self.keys.client_token(digest), record)
            pipe.zadd(self.keys.clients, {name: now})
            try:
                pipe.execute()
            except redis.WatchError:
                raise ClientExistsError(f"a client named {name!r} already exists") from None
        return token

    def revoke(self, name: str) -> bool:
        """Delete a client and its token; False if there was no such client."""
        with self.redis.pipeline() as pipe:
            pipe.watch(self.keys.client(name))  # type: ignore[no-untyped-call]
            digest = pipe.hget(self.keys.client(name), "token_hash")
            if digest is None:
                pipe.unwatch()
                return False
            pipe.multi()
            pipe.delete(self.keys.client(name), self.keys.client_token(str(digest)))
            pipe.zrem(self.keys.clients, name)
            pipe.delete(self.keys.rate_limit(str(digest)))
            try:
                pipe.execute()
            except redis.WatchError:
                return self.revoke(name)  # recreated meanwhile: revoke what is there now
        return True

    def list(self) -> list[ClientInfo]:
        """Every client, oldest first."""
        names = [str(n) for n in self.redis.zrange(self.keys.clients, 0, -1)]
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(self.keys.client(name), ["admin", "created_at"])
            rows = pipe.execute()
        return [
            ClientInfo(name=name, admin=admin == "1", created_at=float(created or 0))
            for name, (admin, created) in zip(names, rows, strict=True)
            if created is not None
        ]

    def verify(self, token: str) -> Client | None:
        """The client a token belongs to, or None (unknown, revoked, malformed)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 256:
            return None
        raw = self.redis.get(self.keys.client_token(token_hash(token)))
        return None if raw is None else client_from_record(raw)

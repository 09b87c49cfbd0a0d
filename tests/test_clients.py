"""Client tokens and the per-client rate limit, on fakeredis; ``hatz-worker tokens``."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import fakeredis
import pytest

from tests.conftest import make_settings
from worker.cli.main import main
from worker.clients import Client, ClientExistsError, ClientRateLimit, ClientStore
from worker.clients.tokens import TOKEN_PREFIX, token_hash
from worker.context import Context
from worker.hatz.client import HatzClient
from worker.store.keys import Keys


@pytest.fixture
def store(fake_redis: fakeredis.FakeRedis) -> ClientStore:
    """A client store under the default prefix."""
    return ClientStore(fake_redis, Keys())


def test_a_created_token_verifies_as_its_client(store: ClientStore) -> None:
    token = store.create("billing", admin=False)
    admin_token = store.create("ops", admin=True)

    assert token.startswith(TOKEN_PREFIX)
    assert store.verify(token) is not None
    assert (store.verify(token).name, store.verify(token).admin) == ("billing", False)  # type: ignore[union-attr]
    assert store.verify(admin_token).admin is True  # type: ignore[union-attr]


def test_only_a_hash_of_the_token_is_stored(
    store: ClientStore, fake_redis: fakeredis.FakeRedis
) -> None:
    token = store.create("billing")

    dump = [(k, fake_redis.dump(k)) for k in fake_redis.keys("*")]
    assert all(token not in k and token.encode() not in (v or b"") for k, v in dump)
    assert fake_redis.hget("hatz:client:billing", "token_hash") == token_hash(token)


@pytest.mark.parametrize("token", ["", "nope", TOKEN_PREFIX + "x" * 43, TOKEN_PREFIX * 100])
def test_an_unknown_or_malformed_token_verifies_as_nobody(store: ClientStore, token: str) -> None:
    store.create("billing")

    assert store.verify(token) is None


def test_a_revoked_token_no_longer_verifies(store: ClientStore) -> None:
    token = store.create("billing")

    assert store.revoke("billing") is True
    assert store.verify(token) is None
    assert store.list() == []
    assert store.revoke("billing") is False


def test_a_name_is_taken_once(store: ClientStore) -> None:
    first = store.create("billing")

    with pytest.raises(ClientExistsError):
        store.create("billing", admin=True)
    assert store.verify(first) is not None


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "é"])
def test_a_bad_name_is_refused(store: ClientStore, name: str) -> None:
    with pytest.raises(ValueError, match="invalid client name"):
        store.create(name)


def test_list_shows_names_and_roles_oldest_first(store: ClientStore) -> None:
    store.create("b-client")
    store.create("a-admin", admin=True)

    assert [(c.name, c.admin) for c in store.list()] == [("b-client", False), ("a-admin", True)]


def test_the_rate_limit_allows_a_burst_then_asks_to_wait(
    store: ClientStore, fake_redis: fakeredis.FakeRedis
) -> None:
    busy, quiet = store.create("busy"), store.create("quiet")
    limit = ClientRateLimit(fake_redis, Keys(), rate=1.0, burst=3)

    answers = [limit.authenticate(busy) for _ in range(4)]

    assert [a[0] for a in answers] == [Client("busy")] * 4
    assert [a[1] for a in answers[:3]] == [0.0, 0.0, 0.0]
    assert 0 < answers[3][1] <= 1.0
    assert limit.authenticate(quiet) == (Client("quiet"), 0.0)  # each client its own bucket
    assert fake_redis.ttl(f"hatz:ratelimit:{token_hash(busy)}") > 0


@pytest.mark.parametrize("token", ["", "nope", TOKEN_PREFIX + "unknown"])
def test_an_unknown_token_takes_nothing_and_leaves_no_key(
    store: ClientStore, fake_redis: fakeredis.FakeRedis, token: str
) -> None:
    limit = ClientRateLimit(fake_redis, Keys(), rate=1.0, burst=3)

    assert limit.authenticate(token) == (None, 0.0)
    assert fake_redis.keys("hatz:ratelimit:*") == []


def test_a_revoked_client_loses_its_bucket_and_its_access(
    store: ClientStore, fake_redis: fakeredis.FakeRedis
) -> None:
    token = store.create("leaver")
    limit = ClientRateLimit(fake_redis, Keys(), rate=1.0, burst=3)
    limit.authenticate(token)

    store.revoke("leaver")

    assert limit.authenticate(token) == (None, 0.0)
    assert fake_redis.keys("hatz:*") == []


def _cli(args: list[str], ctx: Context) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(args, context=ctx)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def ctx(fake_redis: fakeredis.FakeRedis) -> Context:
    """A context on fakeredis."""
    settings = make_settings()
    return Context.from_settings(
        settings, redis_client=fake_redis, client=HatzClient.from_settings(settings)
    )


def test_tokens_commands_create_list_and_revoke(ctx: Context) -> None:
    code, out, _ = _cli(["tokens", "create", "billing", "--json"], ctx)
    assert code == 0
    created = json.loads(out)
    assert created["name"] == "billing"
    assert created["admin"] is False
    assert ClientStore(ctx.redis, ctx.keys).verify(created["token"]) is not None

    code, out, err = _cli(["tokens", "create", "ops", "--admin"], ctx)
    assert code == 0
    assert out.strip().startswith(TOKEN_PREFIX)
    assert "shown only once" in err

    code, out, _ = _cli(["tokens", "list"], ctx)
    assert code == 0
    assert "billing" in out
    assert "ops" in out
    assert created["token"] not in out

    assert _cli(["tokens", "revoke", "billing"], ctx)[0] == 0
    code, _, err = _cli(["tokens", "revoke", "billing"], ctx)
    assert code == 1
    assert "no client named 'billing'" in err


def test_tokens_create_refuses_a_taken_or_bad_name_in_one_line(ctx: Context) -> None:
    assert _cli(["tokens", "create", "billing"], ctx)[0] == 0

    code, _, err = _cli(["tokens", "create", "billing"], ctx)
    assert code == 1
    assert err.strip().endswith("error: a client named 'billing' already exists")

    code, _, err = _cli(["tokens", "create", "a b"], ctx)
    assert code == 2
    assert "invalid client name" in err
    assert "Traceback" not in err

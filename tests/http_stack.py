"""A real HTTP API process for tests: ``hatz-worker serve`` (uvicorn) on a free loopback port.

>>> with LocalRedis() as redis, running_api({"redis_url": redis.url, ...}) as api:
...     token = api.token("alice")
...     api.request("GET", "/v1/me", token=token).json()

Combine it with :func:`tests.stack.running_stack` (pass ``stack.values``) for
runs that a real worker carries out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import requests

from tests.conftest import API_KEY
from worker.clients import ClientStore
from worker.context import redis_from_url
from worker.local.stack import free_port, settings_env, wait_until
from worker.store.keys import Keys

ROOT = Path(__file__).resolve().parents[1]


class ApiServer:
    """``python -m worker.cli.main serve`` as a subprocess with explicit settings."""

    def __init__(
        self,
        settings: Mapping[str, object],
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.settings = {"api_key": API_KEY, **settings}
        self.env = dict(env or {})
        self.args = list(args)
        self.port = port or free_port()
        fd, self.log_path = tempfile.mkstemp(prefix="hatz-api-", suffix=".log")
        os.close(fd)
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only: never an environment proxy

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiServer:
        """Start the process; its output goes to :attr:`log_path`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HATZ_")}
        env.update(settings_env(self.settings))
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        command = [sys.executable, "-m", "worker.cli.main", "serve", "--port", str(self.port)]
        command += self.args
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until ``GET /healthz`` answers 200 (raise if the process exits first)."""

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"hatz-worker serve exited early:\n{self.log_text()[-3000:]}")
            try:
                return self.session.get(self.url + "/healthz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, timeout=timeout, interval=0.05, message="the HTTP API to answer")

    def log_text(self) -> str:
        """Everything the process printed so far."""
        return Path(self.log_path).read_text(errors="replace")

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
        self.session.close()
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode

    def clients(self) -> ClientStore:
        """The token store the server uses (same Redis and key prefix)."""
        keys = Keys(str(self.settings.get("key_prefix", "hatz")))
        return ClientStore(redis_from_url(str(self.settings["redis_url"])), keys)

    def token(self, name: str, *, admin: bool = False) -> str:
        """Make a client and return its token."""
        store = self.clients()
        try:
            return store.create(name, admin=admin)
        finally:
            store.redis.close()

    def request(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> requests.Response:
        """Call the API over HTTP (``token`` as a bearer token)."""
        headers = dict(kwargs.pop("headers", None) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.url + path, headers=headers, **kwargs)


@contextmanager
def running_api(
    settings: Mapping[str, object], *, env: Mapping[str, str] | None = None
) -> Iterator[ApiServer]:
    """A started, ready API server; stopped (and checked to exit cleanly) afterwards.

    ``env``: more environment for the process (e.g. its own ``TMPDIR``).
    """
    server = ApiServer(settings, env=env).start()
    try:
        server.wait_ready()
        yield server
    finally:
        code = server.stop()
        print(server.log_text()[-4000:])
    assert code == 0, f"hatz-worker serve did not shut down cleanly (exit {code})"

"""Private processes on loopback for the demo, the tests and the benchmarks.

:class:`LocalRedis` starts its own ``redis-server`` on a free port in a
temporary directory (so it can be killed and restarted); :class:`CeleryProcess`
starts a real ``celery -A worker worker`` or ``beat`` with explicit settings in
its environment. Nothing here is used by a production deployment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

REDIS_INSTALL_HINT = (
    "redis-server not found on PATH. Install it: Debian/Ubuntu `sudo apt-get install "
    "redis-server`, Fedora `sudo dnf install redis`, macOS `brew install redis`."
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    condition: Callable[[], object],
    *,
    timeout: float,
    interval: float = 0.05,
    message: str = "condition",
) -> object:
    """Poll ``condition`` until it returns something truthy; raise TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class LocalRedis:
    """A private ``redis-server`` on a free loopback port."""

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        directory: str | None = None,
        extra_args: Sequence[str] = (),
        appendfsync: str = "everysec",
    ) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError(REDIS_INSTALL_HINT)
        self.port = port or free_port()
        self.appendonly = appendonly
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="hatz-redis-")
        self.extra_args = list(extra_args)
        # "always" fsyncs every write before answering: a SIGKILLed Redis loses
        # nothing it acknowledged (README "Reliability": required Redis config).
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> LocalRedis:
        """Start the server and wait until it accepts connections."""
        args = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            self.directory,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--maxmemory-policy",
            "noeviction",
            "--protected-mode",
            "yes",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _port_open(self.port), timeout=10, message="redis-server to listen")
        return self

    def kill(self) -> None:
        """SIGKILL the server (data not yet fsynced is lost, as in a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def pause(self) -> None:
        """SIGSTOP: Redis stays "up" but answers nothing (like a network blackhole)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop and remove the temporary directory."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def settings_env(values: Mapping[str, object]) -> dict[str, str]:
    """``{"redis_url": ...}`` -> ``{"HATZ_REDIS_URL": ...}`` for a child process."""
    return {f"HATZ_{k.upper()}": str(v) for k, v in values.items()}


class CeleryProcess:
    """A real ``celery -A worker worker|beat`` subprocess with explicit settings."""

    def __init__(
        self,
        settings: Mapping[str, object],
        *,
        kind: str = "worker",
        args: Sequence[str] = (),
        log_path: str | None = None,
        cwd: str | None = None,
    ) -> None:
        self.settings = dict(settings)
        self.kind = kind
        self.args = list(args)
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"hatz-{kind}-", suffix=".log")
            os.close(fd)
        self.log_path = log_path
        self.cwd = cwd or str(Path(__file__).resolve().parents[2])
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        """The command line."""
        base = [sys.executable, "-m", "celery", "-A", "worker", self.kind, "--loglevel", "INFO"]
        if self.kind == "beat":
            schedule = self.log_path + ".schedule"
            return [*base, "--schedule", schedule, *self.args]
        return [*base, *self.args]

    def start(self) -> CeleryProcess:
        """Start it; output goes to :attr:`log_path`."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("HATZ_") and not k.startswith("CELERY")
        }
        env.update(settings_env(self.settings))
        env["PYTHONUNBUFFERED"] = "1"
        if self._log is not None:  # restarted after a crash
            self._log.close()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def log_text(self) -> str:
        """Everything the process printed so far."""
        try:
            return Path(self.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the worker says it is ready (or beat that it started)."""
        marker = "ready." if self.kind == "worker" else "beat: Starting"

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"celery {self.kind} exited early:\n{self.log_text()[-3000:]}")
            return marker in self.log_text()

        wait_until(ready, timeout=timeout, interval=0.1, message=f"celery {self.kind} ready")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the main process."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def children(self) -> list[int]:
        """PIDs of the pool's child processes."""
        if self.process is None:
            return []
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except (FileNotFoundError, ValueError):
            return []

    def kill(self) -> None:
        """SIGKILL the whole process group (main process and pool children)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (warm shutdown), then SIGKILL after ``timeout``; the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode

    def __enter__(self) -> CeleryProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Supervisor:
    """Restarts a :class:`CeleryProcess` that exits on its own, like compose's
    ``restart: unless-stopped``: the supervising restart policy a deployment
    needs (README "Reliability"). Used by the chaos suite and the demo."""

    def __init__(self, process: CeleryProcess, *, interval: float = 0.2) -> None:
        import threading

        self.process = process
        self.interval = interval
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> Supervisor:
        """Start the process and watch it."""
        self.process.start()
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            proc = self.process.process
            if proc is not None and proc.poll() is not None and not self._stop.is_set():
                self.restarts += 1
                self.process.start()

    def stop(self, timeout: float = 30) -> int | None:
        """Stop watching, then stop the process; its exit code."""
        self._stop.set()
        self._thread.join(timeout=5)
        return self.process.stop(timeout)


class CallbackReceiver:
    """A loopback HTTP server that records every callback it receives.

    ``responses`` is a queue of status codes to answer with, in order (then
    200); tests use it to make the receiver fail a few times first. With a
    ``secret``, each delivery's Standard Webhooks signature is checked as a real
    receiver would: the record says whether it ``verified`` (and the ``problem``
    when not), and a bad signature is answered 401.
    """

    def __init__(self, *, port: int = 0, secret: str | None = None, path: str = "/hook") -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.deliveries: list[dict[str, object]] = []
        self.responses: list[int] = []
        #: While True every request is answered 503 (a flapping receiver).
        self.failing = False
        self.secret = secret
        self.path = path
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver._record(self.path, headers, body)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> int:
        """Store one delivery; the status code to answer it with."""
        delivery: dict[str, object] = {"path": path, "headers": headers, "body": body}
        if self.secret is not None:
            from worker.webhooks.signing import WebhookVerificationError, verify

            try:
                verify(self.secret, body, headers)
                delivery.update(verified=True, problem="")
            except WebhookVerificationError as exc:
                delivery.update(verified=False, problem=str(exc))
        with self._lock:
            status = self.responses.pop(0) if self.responses else 200
            if self.failing:
                status = 503
            if delivery.get("verified") is False:
                status = 401
            delivery.update(at=time.time(), status=status)
            self.deliveries.append(delivery)
        return status

    @property
    def url(self) -> str:
        """The receiver's URL."""
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"

    def snapshot(self) -> list[dict[str, object]]:
        """Every delivery so far, in the order received (a copy)."""
        with self._lock:
            return list(self.deliveries)

    def successful(self) -> list[dict[str, object]]:
        """Deliveries answered with 2xx."""
        with self._lock:
            return [d for d in self.deliveries if 200 <= int(str(d["status"])) < 300]

    def start(self) -> CallbackReceiver:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> CallbackReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

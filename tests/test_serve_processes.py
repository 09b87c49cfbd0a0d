"""``hatz-worker serve --workers N``: the supervisor (with stand-in commands) and, end to
end, two real API processes sharing one port with connections spread over both."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http_stack import ApiServer
from worker.cli import serve_processes
from worker.cli.serve_processes import Supervisor
from worker.local.stack import LocalRedis, wait_until

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("HATZ_")},
    "HATZ_API_KEY": "k" * 20,
}
#: A stand-in serve process: writes its pid into the folder given, then waits to be stopped.
STAND_IN = (
    "import os, signal, sys, pathlib\n"
    "pathlib.Path(sys.argv[1], str(os.getpid())).touch()\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "signal.pause()\n"
)


class Running:
    """A :class:`Supervisor` running on a thread."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.supervisor.run()

    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.supervisor.processes]

    def stop(self) -> int | None:
        self.supervisor.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        return self.code


@pytest.fixture
def started(tmp_path: Path) -> Iterator[tuple[Running, Path]]:
    running = Running(Supervisor([sys.executable, "-c", STAND_IN, str(tmp_path)], 2))
    wait_until(lambda: len(list(tmp_path.iterdir())) == 2, timeout=20, message="two processes")
    yield running, tmp_path
    running.stop()


def test_processes_that_die_are_replaced(
    started: tuple[Running, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    running, folder = started
    monkeypatch.setattr(serve_processes, "STARTUP_GRACE", 0.0)
    first = running.pids()

    running.supervisor.processes[0][0].kill()

    wait_until(lambda: len(list(folder.iterdir())) == 3, timeout=20, message="a replacement")
    now = running.pids()
    assert now[1] == first[1]
    assert now[0] not in first
    assert running.thread.is_alive()


def test_a_stop_ends_every_process_gracefully(started: tuple[Running, Path]) -> None:
    running, _ = started
    processes = [p for p, _ in running.supervisor.processes]

    assert running.stop() == 0
    assert [p.returncode for p in processes] == [0, 0]  # their SIGTERM handler ran


def test_a_process_stopped_from_outside_stops_them_all(started: tuple[Running, Path]) -> None:
    running, _ = started  # e.g. a SIGTERM sent to the whole process group
    processes = [p for p, _ in running.supervisor.processes]

    processes[0].send_signal(signal.SIGTERM)

    running.thread.join(timeout=30)
    assert running.code == 0
    assert [p.returncode for p in processes] == [0, 0]


def test_a_process_that_dies_while_starting_stops_them_all() -> None:
    supervisor = Supervisor([sys.executable, "-c", "import sys; sys.exit(3)"], 2)

    assert supervisor.run() == 1
    assert all(p.poll() is not None for p, _ in supervisor.processes)


def _sockets_by(pids: list[int], port: int, state: str) -> dict[int, int]:
    """How many TCP sockets on local ``port`` in ``state`` (01 established, 0A listening)
    each process holds."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == state:
                inodes.add(fields[9])
    counts: dict[int, int] = {}
    for pid in pids:
        links = [p.readlink().name for p in Path(f"/proc/{pid}/fd").iterdir()]
        counts[pid] = sum(1 for link in links if link[len("socket:[") : -1] in inodes)
    return counts


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_two_processes_share_the_port_and_its_connections() -> None:
    with LocalRedis() as redis:
        server = ApiServer({"redis_url": redis.url}, args=["--workers", "2"]).start()
        try:
            server.wait_ready()
            assert server.process is not None
            parent = server.process.pid
            wait_until(lambda: len(_children(parent)) == 2, timeout=20, message="two processes")
            children = _children(parent)
            # Each process listens once its app is built: connections made before the
            # second one listens all go to the first.
            wait_until(
                lambda: all(_sockets_by(children, server.port, "0A").values()),
                timeout=30,
                message="both processes listening",
            )
            token = server.token("alice")
            # All connected before any is used, as a client's pool or a load balancer opens them.
            connections = [http.client.HTTPConnection("127.0.0.1", server.port) for _ in range(24)]
            try:
                for connection in connections:
                    connection.connect()
                for connection in connections:
                    connection.request(
                        "GET", "/v1/me", headers={"Authorization": f"Bearer {token}"}
                    )
                    answer = connection.getresponse()
                    answer.read()
                    assert answer.status == 200

                counts = _sockets_by(children, server.port, "01")
            finally:
                for connection in connections:
                    connection.close()

            assert sum(counts.values()) >= len(connections)  # and the server's own session
            assert all(count > 0 for count in counts.values()), counts
        finally:
            code = server.stop(timeout=60)
            print(server.log_text()[-4000:])
    assert code == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)


def test_workers_on_a_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli.main", "serve", "--port", str(port),
             "--workers", "2"],
            capture_output=True, text=True, timeout=60, check=False, cwd=ROOT, env=ENV,
        )  # fmt: skip

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"hatz-worker: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert "Traceback" not in done.stdout + done.stderr

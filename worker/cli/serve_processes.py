"""``hatz-worker serve --workers N``: N API processes on one port, the kernel spreading
connections over them.

Why not uvicorn's own ``--workers``: its processes share one listening socket,
and which process accepts a connection is left to whichever wakes first. Under
``bench.http_api``'s load (8 keep-alive connections, as a load balancer or a
service's connection pool holds) all 8 ended on one of two uvicorn workers, in
each of two rounds, and the pair served no more than one process (684 and 716
enqueues/s; uvicorn PR #2472, which would change this, is still open). So each
process here binds its own socket with ``SO_REUSEPORT`` and Linux hashes every
new connection to one of them: the same load then served about twice that.
(Other systems bind such sockets too but may not spread connections.)

This module is the small supervisor that needs: start the processes, forward
SIGTERM/SIGINT for a graceful stop, replace a process that dies, and give up
(exit 1) when one dies straight after starting, which is a configuration error
that restarting would only repeat.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger(__name__)

#: A process that exits sooner than this after starting is not restarted: the
#: cause (settings, the port) would stop the next one too.
STARTUP_GRACE = 5.0
#: How long a stop waits for the processes' graceful shutdown before killing them.
STOP_TIMEOUT = 40.0
#: How often the supervisor looks for a process that exited.
CHECK_INTERVAL = 0.5


def listener(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening; asyncio does that).

    ``reuse_port``: join the port's ``SO_REUSEPORT`` group. Raises ``OSError``
    (address in use, unknown host).
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def check_port_free(host: str, port: int) -> None:
    """Raise ``OSError`` if anything listens on ``host:port`` already.

    Bound without ``SO_REUSEPORT``, so another server's reuse-port group on the
    port (an earlier ``serve --workers``) counts as taken instead of being joined.
    """
    listener(host, port, reuse_port=False).close()


class Supervisor:
    """Runs ``command`` ``count`` times over, until :meth:`stop` or a startup failure."""

    def __init__(self, command: Sequence[str], count: int) -> None:
        self.command = list(command)
        self.count = count
        self.processes: list[tuple[subprocess.Popen[bytes], float]] = []
        self._stopping = threading.Event()

    def _start(self) -> tuple[subprocess.Popen[bytes], float]:
        return subprocess.Popen(self.command), time.monotonic()

    def run(self) -> int:
        """Start the processes and keep them running; 0 after a stop, 1 on a startup failure.

        On the main thread SIGTERM and SIGINT stop it; elsewhere only :meth:`stop` does.
        """
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {
                sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
            }
        try:
            self.processes = [self._start() for _ in range(self.count)]
            outcome = None
            while outcome is None and not self._stopping.wait(CHECK_INTERVAL):
                outcome = self._replace_exited()
            self._stop_all()
            return outcome or 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self) -> None:
        """Ask :meth:`run` to stop the processes (gracefully) and return."""
        self._stopping.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop()

    def _replace_exited(self) -> int | None:
        """Replace each process that failed; or the exit code for all of them to stop with.

        A process that ended cleanly (exit 0) was stopped from outside, e.g. by a
        SIGTERM to the whole process group: all stop (0). One that failed while
        starting would fail again: all stop (1).
        """
        for i, (process, started) in enumerate(self.processes):
            code = process.poll()
            if code is None:
                continue
            if code == 0:
                log.info("serve process %s stopped; stopping the others", process.pid)
                return 0
            if time.monotonic() - started < STARTUP_GRACE:
                log.error("serve process %s exited %s while starting; stopping", process.pid, code)
                return 1
            log.warning("serve process %s exited %s; starting another", process.pid, code)
            self.processes[i] = self._start()
        return None

    def _stop_all(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process, _ in self.processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("serve process %s did not stop in time; killing it", process.pid)
                process.kill()
                process.wait()


def child_command(host: str, port: int) -> list[str]:
    """The command line of one supervised ``serve`` process."""
    return [
        sys.executable,
        "-m",
        "worker.cli.main",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--reuse-port",
    ]

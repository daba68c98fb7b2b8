"""A throw-away ``redis-server`` process on a free loopback port, for tests and ``fmlite up --redis``.

The server binds 127.0.0.1 only, keeps no snapshot or append-only file (``--save ""``,
``--appendonly no``) and writes its log into ``workdir``. Debian's ``redis-server`` package
provides the binary; ``REDIS_SERVER`` overrides its path.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["RedisServerError", "RedisServer", "free_loopback_port", "redis_server_binary"]

logger = logging.getLogger(__name__)


class RedisServerError(RuntimeError):
    """``redis-server`` is missing, exited during start or did not answer PING in time."""


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def redis_server_binary() -> str:
    """Return the path of ``redis-server``; raise ``RedisServerError`` when it is not installed."""
    path = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not path:
        raise RedisServerError("redis-server not found on PATH; install it with `apt-get install redis-server` or set REDIS_SERVER")
    return path


def _answers_ping(port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` child process; ``start()`` picks the port, ``stop()`` ends it by PID."""

    def __init__(self, *, workdir: str | os.PathLike[str] | None = None, max_memory: str | None = None):
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="fmlite-redis-"))
        self.max_memory = max_memory
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RedisServerError("the Redis server is not started")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def _command(self, binary: str, port: int) -> list[str]:
        command = [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir), "--logfile", str(self.log_path),
        ]
        if self.max_memory:
            command += ["--maxmemory", self.max_memory, "--maxmemory-policy", "noeviction"]
        return command

    def start(self, *, timeout_s: float = 20.0, attempts: int = 3) -> "RedisServer":
        """Start the server on a free port; retry with another port if that one was taken meanwhile."""
        binary = redis_server_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(attempts):
            port = free_loopback_port()
            process = subprocess.Popen(self._command(binary, port), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    break
                if _answers_ping(port):
                    self.port, self.process = port, process
                    logger.info("redis-server pid %d listening on 127.0.0.1:%d", process.pid, port)
                    return self
                time.sleep(0.05)
            if process.poll() is None:
                process.kill()
                process.wait()
                last_error = f"no PING answer on port {port} within {timeout_s:.0f} s"
            else:
                stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
                last_error = f"exited with code {process.returncode} on port {port}: {stderr.strip()[-500:]}"
        raise RedisServerError(f"redis-server did not start after {attempts} attempts: {last_error}; log: {self.log_path}")

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """SIGTERM the server (its own PID only) and wait; SIGKILL it after ``timeout_s``."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.error("redis-server pid %d did not exit %.0f s after SIGTERM; killing it", process.pid, timeout_s)
            process.kill()
            process.wait()
        logger.info("redis-server pid %d stopped", process.pid)

    def pause(self) -> None:
        """Stop the process with SIGSTOP: the port still accepts connections but nothing answers."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Continue a process paused with ``pause``."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self, *, timeout_s: float = 20.0) -> None:
        """Start a new server on the same port (its data is gone); used to test recovery."""
        if self.port is None:
            raise RedisServerError("restart needs a server that was started before")
        self.stop()
        port = self.port
        self.process = subprocess.Popen(self._command(redis_server_binary(), port), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not _answers_ping(port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RedisServerError(f"redis-server did not restart on port {port}; log: {self.log_path}")
            time.sleep(0.05)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Server processes of the reliability tests: start, wait for, signal and inspect them on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["ServerProc", "ProcessGroup", "metric_total", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]
FAULT_SERVER = Path(__file__).resolve().parent / "fault_server.py"
SILENT_SERVER = Path(__file__).resolve().parent / "silent_server.py"


@dataclass
class ServerProc:
    """One server process started by a test, with its log and bound port."""

    role: str
    command: list[str]
    log_path: Path
    port_file: Path
    process: subprocess.Popen
    # Thrift servers serve /readyz; the silent fault server only binds a port.
    http: bool = True
    port: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def open_fds(self) -> int:
        """Return the number of open file descriptors of the process."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def get(self, path: str, *, timeout_s: float = 2.0) -> tuple[int, str]:
        """GET ``path`` on the server; return (status, body)."""
        try:
            with urllib.request.urlopen(f"http://{self.address}{path}", timeout=timeout_s) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metrics(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200, f"{self.role} /metrics returned {status}"
        return body

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def wait_exit(self, timeout_s: float) -> int:
        """Wait for the process to exit and return its code; kill it and fail when it does not."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.role} did not exit within {timeout_s:.0f} s; log tail:\n{self.log_tail()}") from None


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum the samples called ``name`` whose labels include ``labels`` in a Prometheus text body."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                total += sample.value
    return total


@dataclass
class ProcessGroup:
    """Processes started by the tests; ``stop_all`` ends every one still running, by PID."""

    workdir: Path
    processes: list[ServerProc] = field(default_factory=list)

    def _spawn(self, role: str, command: list[str], *, http: bool = True) -> ServerProc:
        port_file = self.workdir / f"{role}.port"
        port_file.unlink(missing_ok=True)
        log_path = self.workdir / f"{role}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [*command, "--port-file", str(port_file)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
            )
        server = ServerProc(role, command, log_path, port_file, process, http=http)
        self.processes.append(server)
        return server

    def fmlite(self, role: str, *arguments: str) -> ServerProc:
        """Start ``python -m fmlite.cli ARGUMENTS`` on a free loopback port."""
        return self._spawn(role, [sys.executable, "-m", "fmlite.cli", *arguments, "--listen", "127.0.0.1:0"])

    def fault(self, role: str, mode: str, *arguments: str) -> ServerProc:
        """Start a fault server in ``mode``: "stall" or "scripted" (``fault_server.py``) or "silent" (``silent_server.py``)."""
        if mode == "silent":
            return self._spawn(role, [sys.executable, str(SILENT_SERVER), *arguments], http=False)
        return self._spawn(role, [sys.executable, str(FAULT_SERVER), mode, *arguments])

    def wait_ready(self, servers: Iterable[ServerProc], *, timeout_s: float = 180.0) -> None:
        pending = list(servers)
        deadline = time.monotonic() + timeout_s
        while pending:
            for server in list(pending):
                code = server.process.poll()
                if code is not None:
                    raise AssertionError(f"{server.role} exited with code {code} while starting; log tail:\n{server.log_tail()}")
                if server.port is None and server.port_file.exists():
                    text = server.port_file.read_text().strip()
                    server.port = int(text) if text.isdigit() else None
                if server.port is None:
                    continue
                if not server.http:
                    pending.remove(server)
                    continue
                try:
                    status, _ = server.get("/readyz", timeout_s=1.0)
                except OSError:
                    continue
                if status == 200:
                    pending.remove(server)
            if pending and time.monotonic() > deadline:
                raise AssertionError(
                    f"not ready after {timeout_s:.0f} s: {[s.role for s in pending]}; log tail of {pending[0].role}:\n{pending[0].log_tail()}"
                )
            time.sleep(0.1)

    def stop(self, server: ServerProc, *, timeout_s: float = 20.0) -> int:
        """SIGTERM one process and return its exit code."""
        server.signal(signal.SIGTERM)
        return server.wait_exit(timeout_s)

    def stop_all(self) -> dict[str, int]:
        """SIGTERM every running process (front tiers first), kill the ones that hang; return exit codes."""
        order = {"l0": 0, "l1": 1}
        running = [s for s in self.processes if s.process.poll() is None]
        running.sort(key=lambda s: order.get(s.role.split("-")[0], 2))
        for server in running:
            server.signal(signal.SIGTERM)
        codes = {}
        for server in running:
            try:
                codes[server.role] = server.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.process.kill()
                codes[server.role] = server.process.wait()
        return codes


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())

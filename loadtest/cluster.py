"""Server processes of one benchmark run on 127.0.0.1: leaves, L1 controllers, L0 routers, the REST peer.

Each server is its own process started with this Python. It listens on a free loopback port,
writes the port to a port file, and counts as started once ``GET /readyz`` returns 200. Leaves
also listen for framed Thrift on a free port, and L1s call them there unless a group is started
with ``leaf_transport="http"``. Processes
are stopped by their own PID with SIGTERM (every tier drains and exits 0), and killed only when
they do not exit in time. Unlike ``fmlite.launcher.LocalPlatform`` the tiers start separately,
so several controller groups can share one set of leaves (the chunk-size sweep).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from fmlite.launcher import LEAF_TRANSPORTS, PlatformStartError, ServerProcess, leaf_listen_arguments

__all__ = ["LEAF_KINDS", "Cluster", "PlatformGroup", "PlatformStartError", "pid_pairs"]

logger = logging.getLogger(__name__)

# Leaf scoring kinds: a runner of ``fmlite serve-leaf``, or constant scores (``loadtest.floor_leaf``).
LEAF_KINDS = ("numpy", "savedmodel", "constant")


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass(frozen=True)
class PlatformGroup:
    """One L0 with an L1 per shard in front of a set of leaves."""

    l0: ServerProcess
    l1s: tuple[ServerProcess, ...]
    leaves: tuple[ServerProcess, ...]

    @property
    def address(self) -> str:
        return self.l0.address

    @property
    def servers(self) -> tuple[ServerProcess, ...]:
        return (self.l0, *self.l1s, *self.leaves)


@dataclass
class Cluster:
    """Starts and stops the server processes of a run; logs and port files go to ``workdir``."""

    workdir: Path
    python: str = sys.executable
    processes: list[ServerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    # ---- single processes ---------------------------------------------------------------------

    def spawn(self, role: str, module: str, arguments: Sequence[str], *, framed: bool = False) -> ServerProcess:
        """Start ``python -m module arguments --port-file <workdir>/<role>.port``.

        ``framed`` adds a framed Thrift listener on a free port (leaves only).
        """
        if any(server.role == role for server in self.processes):
            raise ValueError(f"a server named {role!r} was already started in this run")
        port_file = self.workdir / f"{role}.port"
        port_file.unlink(missing_ok=True)
        log_path = self.workdir / f"{role}.log"
        framed_port_file = None
        if framed:
            framed_arguments, framed_port_file = leaf_listen_arguments(port_file)
            arguments = [*arguments, *framed_arguments]
        command = [self.python, "-m", module, *arguments, "--port-file", str(port_file)]
        server = ServerProcess(role, command, log_path, port_file, framed_port_file=framed_port_file)
        with log_path.open("w") as log:
            server.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.processes.append(server)
        logger.debug("started %s (pid %d): %s", role, server.process.pid, " ".join(command))
        return server

    def wait_ready(self, servers: Iterable[ServerProcess], *, timeout_s: float = 300.0) -> None:
        """Wait until every server returns 200 on ``/readyz``; raise ``PlatformStartError`` otherwise."""
        deadline = time.monotonic() + timeout_s
        pending = list(servers)
        while pending:
            for server in list(pending):
                code = server.process.poll()
                if code is not None:
                    raise PlatformStartError(f"{server.role} exited with code {code} during start; log tail:\n{server.log_tail()}")
                server.read_ports()
                if server.port is not None and _ready(server.port):
                    pending.remove(server)
            if pending and time.monotonic() > deadline:
                names = ", ".join(s.role for s in pending)
                raise PlatformStartError(f"not ready after {timeout_s:.0f} s: {names}; log tail of {pending[0].role}:\n{pending[0].log_tail()}")
            time.sleep(0.1)

    def stop(self, servers: Iterable[ServerProcess] | None = None, *, timeout_s: float = 20.0) -> dict[str, int | None]:
        """SIGTERM ``servers`` (default: all that run), wait, kill the ones still running; return exit codes."""
        group = [s for s in (self.processes if servers is None else servers) if s.process is not None and s.process.poll() is None]
        for server in group:
            server.process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for server in group:
            try:
                codes[server.role] = server.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.error("%s (pid %d) did not exit %.0f s after SIGTERM; killing it", server.role, server.process.pid, timeout_s)
                server.process.kill()
                codes[server.role] = server.process.wait()
        return codes

    # ---- tiers --------------------------------------------------------------------------------

    def start_leaves(
        self,
        *,
        kind: str,
        profiles: Path,
        models: Mapping[str, Path],
        shards: int,
        leaves_per_shard: int,
        tag: str,
        extra_arguments: Sequence[str] = (),
        wait: bool = True,
    ) -> dict[int, list[ServerProcess]]:
        """Start ``leaves_per_shard`` leaves of every shard that score with ``kind``; return them by shard.

        With ``wait=False`` it returns at once; pass the leaves to ``wait_ready`` before use.
        """
        if kind not in LEAF_KINDS:
            raise ValueError(f"unknown leaf kind {kind!r}; expected one of {LEAF_KINDS}")
        model_arguments = [argument for name, path in models.items() for argument in ("--model", f"{name}={path}")]
        leaves: dict[int, list[ServerProcess]] = {}
        for shard in range(shards):
            leaves[shard] = []
            for replica in range(leaves_per_shard):
                common = ["--listen", "127.0.0.1:0", "--shard", str(shard), "--num-shards", str(shards),
                          "--profiles", str(profiles), *model_arguments, *extra_arguments]
                role = f"{tag}-leaf-{shard}-{replica}"
                if kind == "constant":
                    leaves[shard].append(self.spawn(role, "loadtest.floor_leaf", common, framed=True))
                else:
                    leaves[shard].append(self.spawn(role, "fmlite.cli", ["serve-leaf", *common, "--runner", kind], framed=True))
        if wait:
            self.wait_ready([s for group in leaves.values() for s in group])
        return leaves

    def start_group(
        self,
        leaves: Mapping[int, Sequence[ServerProcess]],
        *,
        tag: str,
        chunk_size: int = 100,
        cosine_chunk_size: int = 400,
        l1_arguments: Sequence[str] = (),
        l0_arguments: Sequence[str] = (),
        leaf_transport: str = "framed",
    ) -> PlatformGroup:
        """Start one L1 per shard over ``leaves`` and one L0 over those L1s.

        ``leaf_transport`` is how the L1s call the leaves: "framed" or "http".
        """
        if leaf_transport not in LEAF_TRANSPORTS:
            raise ValueError(f"unknown leaf_transport {leaf_transport!r}; expected one of {LEAF_TRANSPORTS}")
        shards = len(leaves)

        def leaf_address(leaf: ServerProcess) -> str:
            return leaf.framed_address if leaf_transport == "framed" else leaf.address

        l1s = [
            self.spawn(
                f"{tag}-l1-{shard}",
                "fmlite.cli",
                ["serve-l1", "--listen", "127.0.0.1:0", "--shard", str(shard), "--num-shards", str(shards),
                 "--leaves", ",".join(leaf_address(s) for s in leaves[shard]), "--chunk-size", str(chunk_size),
                 "--variant-chunk-size", f"cosine={cosine_chunk_size}", *l1_arguments],
            )
            for shard in range(shards)
        ]
        self.wait_ready(l1s)
        l0_command = ["serve-l0", "--listen", "127.0.0.1:0"]
        for shard, l1 in enumerate(l1s):
            l0_command += ["--shard", f"{shard}={l1.address}"]
        l0 = self.spawn(f"{tag}-l0", "fmlite.cli", [*l0_command, *l0_arguments])
        self.wait_ready([l0])
        return PlatformGroup(l0=l0, l1s=tuple(l1s), leaves=tuple(s for group in leaves.values() for s in group))

    def start_rest_peer(self, *, model_base: Path, tag: str) -> ServerProcess:
        """Start the single-process TensorFlow Serving style REST server over ``model_base``."""
        server = self.spawn(f"{tag}-rest", "loadtest.rest_peer", ["--listen", "127.0.0.1:0", "--model", str(model_base)])
        self.wait_ready([server])
        return server


def pid_pairs(servers: Iterable[ServerProcess]) -> list[tuple[str, int]]:
    """Return (role, pid) of each server, for ``loadtest.cpu.snapshot_cpu``."""
    return [(server.role, server.process.pid) for server in servers]

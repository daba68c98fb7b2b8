"""Local platform on loopback: one L0 router, one L1 per shard, leaf replicas, each its own process.

``LocalPlatform`` starts the processes in dependency order (leaves, then L1s, then L0), waits
for each to report ready on ``/readyz``, and stops them in reverse order with SIGTERM so every
tier drains. Every leaf also listens for framed Thrift on a free port, and the L1s call the
leaves there (``framed://``) unless ``leaf_transport`` is "http". Tests and ``fmlite up`` use
the same class.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

__all__ = [
    "ServerProcess",
    "LocalPlatform",
    "PlatformStartError",
    "LEAF_TRANSPORTS",
    "leaf_listen_arguments",
    "artifacts_present",
    "train_artifacts",
    "start_profile_store",
    "run_up",
]

logger = logging.getLogger(__name__)


# Transports of the L1 -> leaf calls: framed Thrift on the leaf's framed port, or Thrift over HTTP.
LEAF_TRANSPORTS = ("framed", "http")


class PlatformStartError(RuntimeError):
    """A server process exited or did not become ready in time; the message carries its log tail."""


@dataclass
class ServerProcess:
    role: str
    command: list[str]
    log_path: Path
    port_file: Path
    process: subprocess.Popen | None = None
    port: int | None = None
    # Set for a leaf started with a framed Thrift listener.
    framed_port_file: Path | None = None
    framed_port: int | None = None

    @property
    def address(self) -> str:
        """HTTP address: /readyz, /metrics and POST /thrift."""
        return f"127.0.0.1:{self.port}"

    @property
    def framed_address(self) -> str:
        """``framed://`` address of the framed Thrift listener; ValueError when the process has none."""
        if self.framed_port is None:
            raise ValueError(f"{self.role} has no framed Thrift listener")
        return f"framed://127.0.0.1:{self.framed_port}"

    def read_ports(self) -> None:
        """Read the bound ports from the port files once the server has written them.

        The framed port file is written before the HTTP one, so both are read together.
        """
        if self.port is not None or not self.port_file.exists():
            return
        text = self.port_file.read_text().strip()
        if not text.isdigit():
            return
        if self.framed_port_file is not None:
            framed = self.framed_port_file.read_text().strip() if self.framed_port_file.exists() else ""
            if not framed.isdigit():
                return
            self.framed_port = int(framed)
        self.port = int(text)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def leaf_listen_arguments(port_file: Path) -> tuple[list[str], Path]:
    """Return the serve-leaf options that open a framed listener on a free port, and its port file."""
    framed_port_file = port_file.with_suffix(".framed-port")
    framed_port_file.unlink(missing_ok=True)
    return ["--framed-port", "0", "--framed-port-file", str(framed_port_file)], framed_port_file


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class LocalPlatform:
    """A whole platform on 127.0.0.1, with logs and port files in ``workdir``."""

    profiles: Path
    models: dict[str, Path]
    shards: int = 2
    leaves_per_shard: int = 2
    l0_port: int = 0
    traffic: Path | None = None
    workdir: Path | None = None
    leaf_args: Sequence[str] = ()
    l1_args: Sequence[str] = ()
    l0_args: Sequence[str] = ()
    # Transport of the L1 -> leaf calls: "framed" or "http" (see LEAF_TRANSPORTS).
    leaf_transport: str = "framed"
    python: str = sys.executable
    processes: list[ServerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.leaf_transport not in LEAF_TRANSPORTS:
            raise ValueError(f"unknown leaf_transport {self.leaf_transport!r}; expected one of {LEAF_TRANSPORTS}")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="fmlite-platform-"))
        self.workdir.mkdir(parents=True, exist_ok=True)

    def _spawn(self, role: str, arguments: list[str], *, framed: bool = False) -> ServerProcess:
        port_file = self.workdir / f"{role}.port"
        port_file.unlink(missing_ok=True)
        log_path = self.workdir / f"{role}.log"
        framed_port_file = None
        if framed:
            framed_arguments, framed_port_file = leaf_listen_arguments(port_file)
            arguments = [*arguments, *framed_arguments]
        command = [self.python, "-m", "fmlite.cli", *arguments, "--port-file", str(port_file)]
        server = ServerProcess(role, command, log_path, port_file, framed_port_file=framed_port_file)
        with log_path.open("w") as log:
            server.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.processes.append(server)
        return server

    def _wait_ready(self, servers: list[ServerProcess], timeout_s: float) -> None:
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

    def start(self, *, timeout_s: float = 300.0) -> "LocalPlatform":
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout_s: float) -> None:
        model_args = [arg for name, path in self.models.items() for arg in ("--model", f"{name}={path}")]
        leaves: dict[int, list[ServerProcess]] = {}
        for shard in range(self.shards):
            leaves[shard] = [
                self._spawn(
                    f"leaf-{shard}-{replica}",
                    ["serve-leaf", "--listen", "127.0.0.1:0", "--shard", str(shard), "--num-shards", str(self.shards),
                     "--profiles", str(self.profiles), *model_args, *self.leaf_args],
                    framed=True,
                )
                for replica in range(self.leaves_per_shard)
            ]
        self._wait_ready([s for group in leaves.values() for s in group], timeout_s)
        l1s = [
            self._spawn(
                f"l1-{shard}",
                ["serve-l1", "--listen", "127.0.0.1:0", "--shard", str(shard), "--num-shards", str(self.shards),
                 "--leaves", ",".join(self._leaf_address(s) for s in leaves[shard]), *self.l1_args],
            )
            for shard in range(self.shards)
        ]
        self._wait_ready(l1s, timeout_s)
        l0_arguments = ["serve-l0", "--listen", f"127.0.0.1:{self.l0_port}"]
        for shard, l1 in enumerate(l1s):
            l0_arguments += ["--shard", f"{shard}={l1.address}"]
        if self.traffic is not None:
            l0_arguments += ["--traffic", str(self.traffic)]
        self._wait_ready([self._spawn("l0", [*l0_arguments, *self.l0_args])], timeout_s)

    def _leaf_address(self, leaf: ServerProcess) -> str:
        return leaf.framed_address if self.leaf_transport == "framed" else leaf.address

    def server(self, role: str) -> ServerProcess:
        for server in self.processes:
            if server.role == role:
                return server
        raise KeyError(f"no server {role!r}; running: {[s.role for s in self.processes]}")

    @property
    def l0_address(self) -> str:
        return self.server("l0").address

    def stop(self, *, timeout_s: float = 20.0) -> dict[str, int | None]:
        """SIGTERM every process, front tier first; return each role's exit code."""
        codes: dict[str, int | None] = {}
        for tier in ("l0", "l1", "leaf"):
            group = [s for s in self.processes if s.role.split("-")[0] == tier and s.process and s.process.poll() is None]
            for server in group:
                server.process.send_signal(signal.SIGTERM)
            for server in group:
                try:
                    server.process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    logger.error("%s did not exit %.0f s after SIGTERM; killing it", server.role, timeout_s)
                    server.process.kill()
                    server.process.wait()
        for server in self.processes:
            if server.process is not None:
                codes[server.role] = server.process.poll()
        return codes

    def __enter__(self) -> "LocalPlatform":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def artifacts_present(var: Path) -> bool:
    """Return True when ``var`` contains a published snapshot and at least one FM-Lite model version."""
    models = var / "models" / "fmlite"
    has_model = models.is_dir() and any(p.name.isdigit() and (p / "saved_model.pb").exists() for p in models.iterdir())
    return (var / "profiles" / "CURRENT").exists() and has_model


def train_artifacts(*, data: str, out: str, num_shards: int, epochs: int | None, seed: int) -> object:
    """Build profiles and train FM-Lite into ``out``, then add the glance statistics to the snapshot.

    The statistics (``glance_stats.npz``, as ``fmlite release`` writes them) let a traffic
    config with exploration buckets point at ``out/profiles``.
    """
    from dataclasses import replace

    from fmlite.release import write_training_stats
    from model.config import PipelineConfig
    from model.pipeline import run_pipeline

    config = PipelineConfig(data_dir=Path(data), out=Path(out), num_shards=num_shards, seed=seed)
    if epochs is not None:
        config = replace(config, train=replace(config.train, epochs=epochs))
    result = run_pipeline(config)
    path = write_training_stats(data, result.snapshot_dir, version=result.snapshot_version)
    print(f"wrote glance statistics to {path}", flush=True)
    return result


def start_profile_store(var: Path) -> object:
    """Start ``redis-server`` on a free loopback port and publish ``var/profiles``' current snapshot to it.

    Returns the running ``fmlite.redis_server.RedisServer``; the caller stops it.
    """
    from fmlite import snapshot
    from fmlite.redis_server import RedisServer
    from model.publish import connect, publish_snapshot

    root = var / "profiles"
    version = snapshot.current_version(root)
    if version is None:
        raise PlatformStartError(f"no published profile snapshot under {root} to copy into Redis")
    server = RedisServer(workdir=var / "run" / "redis").start()
    try:
        client = connect(server.url)
        try:
            result = publish_snapshot(root / str(version), client=client)
        finally:
            client.close()
    except BaseException:
        server.stop()
        raise
    print(f"Redis profile store on {server.url}: version {result.version}, {result.users} users, {result.glances} glances", flush=True)
    return server


def l0_config_warnings(address: str) -> list[str]:
    """Return one warning line per config or statistics error that L0's health call reports.

    L0 starts on a traffic config whose glance statistics cannot be read yet (a release or a
    statistics job may write them later), and its exploration buckets then skip exploring. The
    error is in L0's log and health details; this brings it to the terminal of ``fmlite up``.
    """
    import asyncio

    from fmlite.release_wait import fetch_health

    try:
        details = asyncio.run(fetch_health(address)).details or {}
    except Exception as error:  # a warning helper must not stop a platform that started
        return [f"warning: could not ask L0 at {address} for its health details: {type(error).__name__}: {error}"]
    return config_warnings(details)


def config_warnings(details: dict[str, str]) -> list[str]:
    """Return the warning lines for the config and statistics errors in L0's health ``details``."""
    lines = []
    if "traffic_error" in details:
        lines.append(f"warning: L0 rejected the traffic config and kept the last good one: {details['traffic_error']}")
    if "glance_stats_error" in details:
        error, loaded_version = details["glance_stats_error"], details.get("glance_stats_version", "none")
        if loaded_version == "none":
            lines.append(f"warning: L0 has no glance statistics ({error}); exploration buckets skip exploring until the file can be read")
        else:
            lines.append(f"warning: L0 cannot read new glance statistics ({error}); it keeps version {loaded_version}")
    return lines


def run_up(args: argparse.Namespace) -> int:
    """``fmlite up``: train when artifacts are missing, start the platform, serve or replay once."""
    from fmlite.serve import configure_logging

    configure_logging("up")
    var = Path(args.var)
    if args.traffic:
        from controller.traffic import load_traffic

        try:
            # The same check L0 runs at start, done before any training or process start.
            load_traffic(args.traffic)
        except ValueError as error:
            print(f"error: invalid traffic config: {error}", file=sys.stderr, flush=True)
            return 2
    if not artifacts_present(var):
        print(f"no trained artifacts under {var}; building profiles and training on {args.data}", flush=True)
        train_artifacts(data=args.data, out=str(var), num_shards=args.shards, epochs=None, seed=7)
    else:
        print(f"using trained artifacts under {var} (delete it to train again)", flush=True)
    redis = start_profile_store(var) if getattr(args, "redis", False) else None
    try:
        return _serve(args, var, leaf_args=["--redis-url", redis.url] if redis is not None else [])
    finally:
        if redis is not None:
            redis.stop()


def _serve(args: argparse.Namespace, var: Path, *, leaf_args: list[str]) -> int:
    platform = LocalPlatform(
        profiles=var / "profiles",
        models={"fmlite": var / "models" / "fmlite"},
        shards=args.shards,
        leaves_per_shard=args.leaves_per_shard,
        l0_port=0 if args.once else args.port,
        traffic=Path(args.traffic) if args.traffic else None,
        workdir=var / "run",
        leaf_args=leaf_args,
        # The replay sends requests with a budget of --timeout-ms; each leaf call gets 60% of it,
        # so a retry on the other replica still fits, as the 30 ms default does for 50 ms requests.
        l1_args=["--chunk-timeout-ms", str(max(30.0, 0.6 * args.timeout_ms))] if args.once else [],
    )
    print(f"starting {args.shards} shards x {args.leaves_per_shard} leaves, {args.shards} L1 controllers and one L0 router "
          f"(logs in {platform.workdir})", flush=True)
    platform.start()
    try:
        print(f"L0 router listening on {platform.l0_address}", flush=True)
        for line in l0_config_warnings(platform.l0_address):
            print(line, flush=True)
        if args.once:
            from fmlite.replay import replay_test_day

            report = replay_test_day(address=platform.l0_address, data=args.data, timeout_ms=args.timeout_ms)
            print(report.render(), flush=True)
            return 0
        from fmlite.replay import example_request

        user, glances = example_request(var)
        print("try:", flush=True)
        print(f"  .venv/bin/fmlite predict --address {platform.l0_address} --user {user} --glances {','.join(glances)}", flush=True)
        print("serving until interrupted (Ctrl-C)", flush=True)
        stop = {"now": False}

        def request_stop(signum: int, frame: object) -> None:
            stop["now"] = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        while not stop["now"]:
            for server in platform.processes:
                if server.process.poll() is not None:
                    print(f"{server.role} exited with code {server.process.returncode}; log tail:\n{server.log_tail()}", flush=True)
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        codes = platform.stop()
        failed = {role: code for role, code in codes.items() if code not in (0, None)}
        print("platform stopped" + (f"; non-zero exits: {failed}" if failed else ""), flush=True)

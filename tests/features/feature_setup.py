"""Artifact roots, candidates, traffic configs and CLI runs shared by the feature tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmlite import snapshot
from fmlite.glance_stats import STATS_FILE, build_glance_stats, write_glance_stats
from fmlite.launcher import LocalPlatform

REPOSITORY = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CommandResult:
    code: int
    output: str


def run_fmlite(*arguments: str, timeout_s: float = 600.0) -> CommandResult:
    """Run ``python -m fmlite.cli ARGUMENTS`` and return its exit code and combined output."""
    completed = subprocess.run(
        [sys.executable, "-m", "fmlite.cli", *arguments],
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return CommandResult(completed.returncode, completed.stdout)


def copy_served_root(trained: Path, root: Path) -> tuple[int, int]:
    """Copy the models and the published snapshot of a pipeline run into ``root``; return their versions."""
    shutil.copytree(trained / "models", root / "models")
    shutil.copytree(trained / "profiles", root / "profiles")
    profile = snapshot.current_version(root / "profiles")
    model = max(int(p.name) for p in (root / "models" / "fmlite").iterdir() if p.name.isdigit())
    return model, profile


def copy_as_version(root: Path, candidate: Path, version: int) -> None:
    """Write the served model and snapshot of ``root`` under ``candidate`` as ``version``, unchanged otherwise."""
    model = max(int(p.name) for p in (root / "models" / "fmlite").iterdir() if p.name.isdigit())
    shutil.copytree(root / "models" / "fmlite" / str(model), candidate / "models" / "fmlite" / str(version))
    served = root / "profiles" / str(snapshot.current_version(root / "profiles"))
    target = candidate / "profiles" / str(version)
    shutil.copytree(served, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = version
    (target / "manifest.json").write_text(json.dumps(manifest))


def worse_candidate(root: Path, candidate: Path, version: int, peeked_glances: set[str]) -> None:
    """Write a candidate that ranks every peeked glance of the held-out day last.

    Its model is the served one; its snapshot drops the peeked glances' profiles and serves
    unknown glances with the fallback score 0, so each user's peeks score 0.
    """
    model = max(int(p.name) for p in (root / "models" / "fmlite").iterdir() if p.name.isdigit())
    shutil.copytree(root / "models" / "fmlite" / str(model), candidate / "models" / "fmlite" / str(version))
    directory = root / "profiles" / str(snapshot.current_version(root / "profiles"))
    manifest = snapshot.read_manifest(directory)
    glances = snapshot.load_glances(directory, manifest)
    keep = np.array([gid not in peeked_glances for gid in glances.ids.tolist()])
    tables = [snapshot.load_users(directory, shard, manifest) for shard in range(manifest.num_shards)]
    users = {
        "ids": np.concatenate([t.ids for t in tables]),
        **{section: np.concatenate([getattr(t, section) for t in tables]) for section in snapshot.SECTIONS},
    }
    snapshot.write_snapshot(
        candidate / "profiles",
        version=version,
        num_shards=manifest.num_shards,
        meta_columns=manifest.meta_columns,
        glances={"ids": glances.ids[keep], **{section: getattr(glances, section)[keep] for section in snapshot.SECTIONS}},
        users=users,
        cold_start=manifest.cold_start,
        fallback_score=0.0,
    )


SHARDS = 2
# The first traffic config: every user in one bucket of the weighted blend, exploring.
BLEND_TRAFFIC = {
    "variants": {
        "fmlite": {},
        "cosine": {},
        "blend": {"combine": "weighted_sum", "weights": {"fmlite": 0.7, "cosine": 0.3}},
        "cosine_by_fmlite": {"combine": "rerank", "primary": "cosine", "secondary": "fmlite", "top_k": 5},
    },
    "glance_stats": {"path": "profiles", "reload_interval_s": 1},
    "reload_interval_s": 0.5,
    "buckets": [
        {
            "name": "fresh",
            "fraction": 1.0,
            "variant": "blend",
            "explore": {"policy": "epsilon_greedy", "epsilon": 1.0, "max_age_hours": 6, "slate_size": 3, "max_promotions": 1},
        }
    ],
}


@dataclass(frozen=True)
class FeaturePlatform:
    platform: LocalPlatform
    root: Path
    traffic: Path
    model_version: int
    profile_version: int

    @property
    def leaves(self) -> list[str]:
        return [server.address for server in self.platform.processes if server.role.startswith("leaf")]

    def leaf_of_shard(self, shard: int) -> str:
        return self.platform.server(f"leaf-{shard}-0").address

    def write_traffic(self, config: dict) -> None:
        temporary = self.traffic.with_suffix(".tmp")
        temporary.write_text(json.dumps(config))
        temporary.replace(self.traffic)


def write_sample_stats(snapshot_dir: Path, mind_data, version: str) -> None:
    """Write glance statistics of the sample's whole log, and of every snapshot glance, into ``snapshot_dir``."""
    frame = mind_data.interactions.frame
    times = frame["timestamp"].to_numpy(dtype="datetime64[ms]").astype(np.int64)
    stats = build_glance_stats(
        frame["glance_id"].to_numpy(dtype=object).astype(str),
        times,
        frame["peek"].to_numpy(),
        as_of_ms=int(times.max()) + 1,
        version=version,
        known_ids=snapshot.load_glances(snapshot_dir, verify=False).ids,
    )
    write_glance_stats(snapshot_dir / STATS_FILE, stats)


def wait_until(condition, *, timeout_s: float = 20.0, interval_s: float = 0.2, message: str = "condition"):
    """Poll ``condition`` until it returns a true value, and return that value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout_s} s")
        time.sleep(interval_s)


@dataclass
class LeafProcess:
    """One ``fmlite serve-leaf`` process started by a test; ``stop`` ends it by PID."""

    process: subprocess.Popen
    port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_leaf(workdir: Path, arguments: list[str], *, timeout_s: float = 300.0) -> LeafProcess:
    """Start a leaf with ``arguments`` on a free loopback port and wait until ``/readyz`` returns 200."""
    import urllib.error
    import urllib.request

    port_file, log = workdir / "leaf.port", workdir / "leaf.log"
    with log.open("w") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "fmlite.cli", "serve-leaf", "--listen", "127.0.0.1:0", "--port-file", str(port_file), *arguments],
            cwd=REPOSITORY, stdout=stream, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"leaf exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
        if port_file.exists() and port_file.read_text().strip().isdigit():
            port = int(port_file.read_text())
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
                    if reply.status == 200:
                        return LeafProcess(process=process, port=port, log=log)
            except (urllib.error.URLError, OSError):
                pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"leaf not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")

"""Measure how long a leaf takes to load a large profile snapshot and how much memory the profiles take.

A seeded generator writes a snapshot of ``--users`` users and ``--glances`` live glances in the
layout of the MIND sample (145 meta columns, 384-wide text and image embeddings by default),
partitioned into ``--shards`` shards. Each measurement then runs in a fresh Python process, so
its resident memory is the leaf's alone:

- ``files``: ``leaf.profiles.load_profile_cache`` of shard 0 from the file snapshot;
- ``redis`` (with ``--redis``): the snapshot is published to a ``redis-server`` started on a free
  loopback port, then ``leaf.store.RedisProfileSource`` loads shard 0 into its cache.

Run: ``python -m loadtest.profile_capacity --users 1000000 --glances 50000 --out /tmp/capacity --redis``
The output is a Markdown table and a JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["generate_snapshot", "main"]

# Rows generated per block, so the generator never keeps two copies of the whole user table.
_BLOCK = 100_000


def _status_bytes(field: str) -> int:
    """Return ``VmRSS`` (resident now) or ``VmHWM`` (resident peak) of this process from /proc."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    values = rng.standard_normal((rows, dim), dtype=np.float32)
    values /= np.linalg.norm(values, axis=1, keepdims=True)
    return values


def _meta_rows(rng: np.random.Generator, rows: int, meta_dim: int, *, one_hot: bool) -> np.ndarray:
    meta = np.zeros((rows, meta_dim), np.float32)
    # Three categorical fields: one slot each, as the glance encoder writes them.
    for _ in range(3):
        slots = rng.integers(0, meta_dim - 1, rows)
        meta[np.arange(rows), slots] = 1.0 if one_hot else rng.random(rows, dtype=np.float32)
    meta[:, -1] = (rng.random(rows) < 0.5).astype(np.float32)
    return meta


def generate_snapshot(root: Path, *, users: int, glances: int, shards: int, meta_dim: int, dim: int, seed: int, version: int = 1) -> Path:
    """Write and publish a seeded snapshot under ``root``; return its directory."""
    from fmlite import snapshot

    rng = np.random.default_rng(seed)
    user_table: dict[str, Any] = {
        "ids": np.array([f"u{index:09d}" for index in range(users)]),
        "meta": np.empty((users, meta_dim), np.float32),
        "image": np.empty((users, dim), np.float32),
        "text": np.empty((users, dim), np.float32),
    }
    for start in range(0, users, _BLOCK):
        stop = min(start + _BLOCK, users)
        user_table["meta"][start:stop] = _meta_rows(rng, stop - start, meta_dim, one_hot=False)
        user_table["image"][start:stop] = _unit_rows(rng, stop - start, dim)
        user_table["text"][start:stop] = _unit_rows(rng, stop - start, dim)
    glance_table = {
        "ids": np.array([f"g{index:07d}" for index in range(glances)]),
        "meta": _meta_rows(rng, glances, meta_dim, one_hot=True),
        "image": _unit_rows(rng, glances, dim),
        "text": _unit_rows(rng, glances, dim),
    }
    columns = [f"category=c{index}" for index in range(meta_dim - 1)] + ["has_image"]
    cold = {"meta": np.full(meta_dim, 0.05, np.float32), "image": np.zeros(dim, np.float32), "text": np.zeros(dim, np.float32)}
    directory = snapshot.write_snapshot(
        root, version=version, num_shards=shards, meta_columns=columns, glances=glance_table, users=user_table,
        cold_start=cold, fallback_score=0.04, info={"generator": "loadtest.profile_capacity", "seed": seed},
    )
    snapshot.publish_version(root, version)
    return directory


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    """Load shard 0 in this process and return the figures (run in a fresh process)."""
    before = _status_bytes("VmRSS")
    started = time.perf_counter()
    if args.source == "files":
        from leaf.profiles import load_profile_cache

        profiles = load_profile_cache(args.root, shard=0, num_shards=args.shards)
    else:
        from leaf.store import RedisProfileSource, RedisStoreConfig

        config = RedisStoreConfig(url=args.redis_url, max_cached_users=args.max_cached_users, bulk_timeout_s=120.0, batch_users=2000)
        store = RedisProfileSource(config, shard=0, num_shards=args.shards)
        profiles = store.load(store.published_version())
    seconds = time.perf_counter() - started
    after = _status_bytes("VmRSS")
    # VmHWM starts afresh at exec. getrusage(2) keeps ru_maxrss across execve, so it would report
    # the forking parent's peak.
    peak = _status_bytes("VmHWM")
    return {
        "source": args.source,
        "users": len(profiles.users),
        "glances": len(profiles.glances),
        "load_seconds": round(seconds, 2),
        "rss_added_bytes": after - before,
        "rss_peak_bytes": peak,
    }


def _run_measure(arguments: list[str]) -> dict[str, Any]:
    output = subprocess.run([sys.executable, "-m", "loadtest.profile_capacity", "measure", *arguments], check=True, capture_output=True, text=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def _per_million(value: float, users: int) -> float:
    return value / users * 1_000_000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.profile_capacity", description="Profile load time and leaf memory per million users.")
    commands = parser.add_subparsers(dest="command")
    measure = commands.add_parser("measure", help=argparse.SUPPRESS)
    measure.add_argument("--source", choices=["files", "redis"], required=True)
    measure.add_argument("--root")
    measure.add_argument("--redis-url")
    measure.add_argument("--shards", type=int, required=True)
    measure.add_argument("--max-cached-users", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000, help="users in the snapshot (default %(default)s)")
    parser.add_argument("--glances", type=int, default=50_000, help="live glances (default %(default)s)")
    parser.add_argument("--shards", type=int, default=2, help="user shards; shard 0 is loaded (default %(default)s)")
    parser.add_argument("--meta-dim", type=int, default=145, help="meta columns (default %(default)s, the MIND sample's)")
    parser.add_argument("--dim", type=int, default=384, help="embedding width (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default %(default)s)")
    parser.add_argument("--out", default="/tmp/fmlite-capacity", help="work directory for the snapshot (default %(default)s)")
    parser.add_argument("--redis", action="store_true", help="also publish to a local redis-server and load from it")
    args = parser.parse_args(argv)

    if args.command == "measure":
        print(json.dumps(_measure(args)))
        return 0

    out = Path(args.out)
    root = out / "profiles"
    started = time.perf_counter()
    if not (root / "CURRENT").exists():
        generate_snapshot(root, users=args.users, glances=args.glances, shards=args.shards, meta_dim=args.meta_dim, dim=args.dim, seed=args.seed)
    generate_seconds = time.perf_counter() - started
    results = [_run_measure(["--source", "files", "--root", str(root), "--shards", str(args.shards)])]
    redis_figures: dict[str, Any] = {}
    if args.redis:
        from fmlite import snapshot
        from fmlite.redis_server import RedisServer
        from model.publish import connect, publish_snapshot

        with RedisServer(workdir=out / "redis") as server:
            client = connect(server.url, socket_timeout_s=600.0)
            published = publish_snapshot(root / str(snapshot.current_version(root)), client=client)
            used = int(client.info("memory")["used_memory"])
            client.close()
            redis_figures = {"publish_seconds": round(published.seconds, 1), "redis_used_memory_bytes": used}
            results.append(_run_measure(["--source", "redis", "--redis-url", server.url, "--shards", str(args.shards)]))

    report = {
        "users": args.users, "glances": args.glances, "shards": args.shards, "meta_dim": args.meta_dim, "dim": args.dim,
        "generate_seconds": round(generate_seconds, 1), "cpus": os.cpu_count(), "measurements": results, **redis_figures,
    }
    print("| source | users loaded (shard 0) | glances | load time | RSS added | RSS peak | RSS per million users | load time per million users |")
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        print(
            f"| {result['source']} | {result['users']:,} | {result['glances']:,} | {result['load_seconds']:.1f} s "
            f"| {result['rss_added_bytes'] / 2**30:.2f} GiB | {result['rss_peak_bytes'] / 2**30:.2f} GiB | {_per_million(result['rss_added_bytes'], result['users']) / 2**30:.2f} GiB "
            f"| {_per_million(result['load_seconds'], result['users']):.1f} s |"
        )
    if redis_figures:
        print(f"Redis: publish {redis_figures['publish_seconds']} s, used_memory {redis_figures['redis_used_memory_bytes'] / 2**30:.2f} GiB "
              f"for {args.users:,} users ({_per_million(redis_figures['redis_used_memory_bytes'], args.users) / 2**30:.2f} GiB per million)")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Time the scoring step of the leaf's model runners on the same 100-glance chunk.

Only ``runner.score`` is timed (the user's profile and the glance rows are already looked up),
for the ``savedmodel`` runner (in-process TensorFlow), the ``numpy`` fast path and, with
``--tfserving``, the ``tfserving`` runner against ``leaf.local_prediction_service`` on loopback.
Each runner scores the chunk ``--calls`` times after a warm-up; the best of ``--repeats`` runs is
reported, with the ratio to the SavedModel runner.

Run: ``python -m loadtest.scoring_step --artifacts var`` (a ``fmlite train`` output directory).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["time_runner", "main"]


def time_runner(runner: Any, user: Any, profiles: Any, rows: np.ndarray, *, calls: int, repeats: int) -> float:
    """Return the best mean seconds per ``runner.score`` call over ``repeats`` runs of ``calls`` calls."""
    for _ in range(max(10, calls // 10)):
        runner.score(user, profiles, rows)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            runner.score(user, profiles, rows)
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.scoring_step", description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="var", help="artifact root with profiles/ and models/fmlite/ (default %(default)s)")
    parser.add_argument("--chunk", type=int, default=100, help="glances per chunk (default %(default)s)")
    parser.add_argument("--calls", type=int, default=300, help="calls per timed run (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best is reported (default %(default)s)")
    parser.add_argument("--tfserving", action="store_true", help="also time the tfserving runner against the local gRPC service")
    args = parser.parse_args(argv)

    from fmlite import snapshot
    from leaf.model_files import latest_model_version
    from leaf.numpy_runner import NumPyRunner
    from leaf.profiles import load_profile_cache
    from leaf.savedmodel_runner import SavedModelRunner

    root = Path(args.artifacts)
    base = root / "models" / "fmlite"
    version = latest_model_version(base)
    manifest = snapshot.read_manifest(root / "profiles" / str(snapshot.current_version(root / "profiles")))
    profiles = load_profile_cache(root / "profiles", shard=0, num_shards=manifest.num_shards)
    user = profiles.users.lookup(str(profiles.users.table.ids[0]))
    rows = np.arange(args.chunk) % len(profiles.glances)

    runners: dict[str, Any] = {
        "savedmodel": SavedModelRunner("fmlite", base, version=version),
        "numpy": NumPyRunner("fmlite", base, version=version).bind(profiles),
    }
    service = None
    if args.tfserving:
        from leaf.local_prediction_service import LocalPredictionService
        from leaf.tfserving_runner import TFServingRunner

        service = LocalPredictionService(model_name="fmlite", base_path=base)
        service.start()
        runners["tfserving"] = TFServingRunner("fmlite", base, address=service.address, model_name="fmlite", version=version)
    try:
        seconds = {name: time_runner(runner, user, profiles, rows, calls=args.calls, repeats=args.repeats) for name, runner in runners.items()}
    finally:
        if service is not None:
            service.stop()
    reference = seconds["savedmodel"]
    print(f"| runner | us per {args.chunk}-glance chunk | speed-up over savedmodel |")
    print("|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value * 1e6:.0f} | {reference / value:.1f}x |")
    print(json.dumps({"chunk": args.chunk, "model_version": version, "seconds_per_chunk": seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

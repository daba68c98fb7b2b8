"""The leaf's scoring step alone: the NumPy runner against the in-process SavedModel call.

Both runners score the same user against the same chunk of glance rows of one shard's
``ProfileCache``. The user's vectors are passed without a cache key, so the NumPy runner
computes the user side on every call, as it does for the first chunk of a request. Later
chunks of a request reuse that user side and cost less. Each call is timed with the process's
CPU clock, so TensorFlow's own threads count. The median of many calls is kept, so other work
on the machine changes the figure little. The scores of both runners are compared before
anything is timed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["KernelTiming", "time_leaf_kernels"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelTiming:
    """Median CPU time of one scoring call of each runner on the same chunk."""

    chunk_size: int
    numpy_us: float
    savedmodel_us: float
    # Largest absolute difference between the two runners' scores on the chunk.
    max_abs_difference: float

    @property
    def speedup(self) -> float:
        return self.savedmodel_us / self.numpy_us


def _median_cpu_us(call, repeats: int) -> float:
    call()  # the first call may trace or allocate
    samples = []
    for _ in range(repeats):
        started = time.process_time_ns()
        call()
        samples.append(time.process_time_ns() - started)
    return float(np.median(samples)) / 1000.0


def time_leaf_kernels(
    *, profiles_root: Path, model_base: Path, chunk_size: int = 100, repeats: int = 200, seed: int = 0
) -> KernelTiming:
    """Time ``score`` of the NumPy and the SavedModel runner on one ``chunk_size`` chunk of shard 0."""
    from leaf.numpy_runner import NumPyRunner
    from leaf.profiles import load_profile_cache
    from leaf.savedmodel_runner import SavedModelRunner
    from fmlite import snapshot

    version = snapshot.current_version(profiles_root)
    manifest = snapshot.read_manifest(Path(profiles_root) / str(version))
    profiles = load_profile_cache(profiles_root, shard=0, num_shards=manifest.num_shards)
    users = profiles.users
    if not len(users):
        raise ValueError(f"shard 0 of {profiles_root} contains no user to time the scoring step with")
    rng = np.random.default_rng(seed)
    user = users.lookup(str(users.table.ids[int(rng.integers(len(users)))])) if hasattr(users, "table") else profiles.cold_start
    # Without a key the runner cannot cache the user side: every timed call pays for it.
    user = dataclasses.replace(user, key=None)
    rows = rng.choice(len(profiles.glances), size=chunk_size, replace=chunk_size > len(profiles.glances))
    fast = NumPyRunner("fmlite", model_base).bind(profiles)
    reference = SavedModelRunner("fmlite", model_base).bind(profiles)
    difference = float(np.max(np.abs(fast.score(user, profiles, rows) - reference.score(user, profiles, rows))))
    numpy_us = _median_cpu_us(lambda: fast.score(user, profiles, rows), repeats)
    savedmodel_us = _median_cpu_us(lambda: reference.score(user, profiles, rows), repeats)
    logger.info("scoring step on %d glances: NumPy %.1f us, SavedModel %.1f us (CPU, median of %d)", chunk_size, numpy_us, savedmodel_us, repeats)
    return KernelTiming(chunk_size=chunk_size, numpy_us=numpy_us, savedmodel_us=savedmodel_us, max_abs_difference=difference)

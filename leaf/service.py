"""Leaf predictor: score one chunk of glance ids for one user from local profiles.

Contract of ``predict``:
- the user must hash to this leaf's shard (``InvalidRequest`` otherwise) and the variant must be
  one this leaf serves;
- a user without a profile is scored with the cold-start profile: every position carries
  ``FLAG_COLD_START_USER`` and the request is counted;
- a glance without a profile gets the snapshot's fallback score and ``FLAG_UNKNOWN_GLANCE``,
  and is counted; it is never passed to the model;
- a request that arrives with ``timeout_ms`` 0 is dropped without scoring (``DeadlineExceeded``)
  and counted;
- the response names the model and profile versions that produced the scores.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fmlite.sharding import shard_of
from leaf.profiles import ProfileCache, load_profile_cache
from leaf.runners import CosineRunner, ModelRunner
from rpc.idl import fmlite_thrift
from rpc.validation import invalid, validate_predict_request

__all__ = ["LeafConfig", "LeafHandler", "build_runner"]

logger = logging.getLogger(__name__)

T = fmlite_thrift
FLAG_UNKNOWN = T.FLAG_UNKNOWN_GLANCE
FLAG_COLD = T.FLAG_COLD_START_USER


@dataclass(frozen=True)
class LeafConfig:
    """Settings of one leaf process."""

    shard: int
    num_shards: int
    profiles: str
    # Variant name -> model base directory (TF Serving layout). "cosine" needs no directory.
    models: Mapping[str, str] = field(default_factory=dict)
    # Runner per variant with a model directory: "savedmodel" (in-process TensorFlow).
    runner: str = "savedmodel"
    default_variant: str = "fmlite"
    serve_cosine: bool = True
    # Chunk sizes warmed up at start so the first real call does not pay for tracing.
    warmup_sizes: tuple[int, ...] = (1, 100, 400)

    def __post_init__(self) -> None:
        if not 0 <= self.shard < self.num_shards:
            raise ValueError(f"shard {self.shard} is out of range for {self.num_shards} shards")
        if self.runner not in ("savedmodel",):
            raise ValueError(f"unknown runner {self.runner!r}; available: savedmodel")


def build_runner(kind: str, name: str, base: str) -> ModelRunner:
    """Create the runner ``kind`` for variant ``name`` from the model base directory ``base``."""
    if kind == "savedmodel":
        from leaf.savedmodel_runner import SavedModelRunner

        return SavedModelRunner(name, base)
    raise ValueError(f"unknown runner {kind!r}; available: savedmodel")


class LeafMetrics:
    def __init__(self, registry: CollectorRegistry, tier: str = "leaf"):
        self.predictions = Counter("fmlite_predictions", "Glance positions scored and returned.", ["tier"], registry=registry).labels(tier=tier)
        self.unknown_glances = Counter(
            "fmlite_unknown_glances", "Positions flagged as unknown glances (fallback score).", ["tier"], registry=registry
        ).labels(tier=tier)
        self.cold_start_users = Counter(
            "fmlite_cold_start_users", "Requests scored with the cold-start profile.", ["tier"], registry=registry
        ).labels(tier=tier)
        self.deadline_dropped = Counter(
            "fmlite_deadline_dropped", "Requests dropped unscored because their deadline had passed.", ["tier"], registry=registry
        ).labels(tier=tier)
        self.rejected_profile_rows = Gauge(
            "fmlite_rejected_profile_rows", "Snapshot rows rejected at load for NaN or inf.", ["tier"], registry=registry
        ).labels(tier=tier)
        self.score_seconds = Histogram(
            "fmlite_leaf_score_seconds",
            "Time spent in the model runner per chunk.",
            ["tier", "variant"],
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
            registry=registry,
        )
        self.model_version = Gauge(
            "fmlite_model_version_info", "Loaded model version per variant (value 1).", ["tier", "variant", "version"], registry=registry
        )
        self.profile_version = Gauge(
            "fmlite_profile_version_info", "Loaded profile snapshot version (value 1).", ["tier", "version"], registry=registry
        )
        self.profile_load_seconds = Gauge(
            "fmlite_profile_load_seconds", "Time the last profile snapshot took to load.", ["tier"], registry=registry
        ).labels(tier=tier)


class LeafHandler:
    """The leaf tier's handler for the Thrift server."""

    tier = "leaf"

    def __init__(self, config: LeafConfig, *, registry: CollectorRegistry):
        self.config = config
        self.metrics = LeafMetrics(registry)
        self.draining = False
        self.profiles: ProfileCache | None = None
        self.runners: dict[str, ModelRunner] = {}

    def load(self) -> None:
        """Load profiles and models, and warm every runner up; raise when anything is missing."""
        config = self.config
        profiles = load_profile_cache(config.profiles, shard=config.shard, num_shards=config.num_shards)
        runners: dict[str, ModelRunner] = {}
        for name, base in config.models.items():
            runners[name] = build_runner(config.runner, name, base)
        if config.serve_cosine and "cosine" not in runners:
            runners["cosine"] = CosineRunner()
        if not runners:
            raise ValueError("the leaf serves no variant: give at least one --model NAME=DIR or keep the cosine baseline")
        for runner in runners.values():
            self._warm_up(runner, profiles)
        self.profiles = profiles
        self.runners = runners
        self.metrics.rejected_profile_rows.set(profiles.rejected_rows)
        self.metrics.profile_load_seconds.set(profiles.load_seconds)
        self.metrics.profile_version.labels(tier=self.tier, version=profiles.version).set(1)
        for name, runner in runners.items():
            self.metrics.model_version.labels(tier=self.tier, variant=name, version=runner.version).set(1)

    def _warm_up(self, runner: ModelRunner, profiles: ProfileCache) -> None:
        for size in self.config.warmup_sizes:
            rows = np.arange(size) % len(profiles.glances)
            scores = runner.score(profiles.cold_start, profiles, rows)
            if scores.shape != (size,) or not np.all(np.isfinite(scores)):
                raise ValueError(f"runner {runner.name} version {runner.version} returned invalid warm-up scores for {size} rows")

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if self.profiles is None or not self.runners:
            return False, "loading"
        return True, "ok"

    async def health(self) -> Any:
        ready, status = self.readiness()
        runner = self.runners.get(self.config.default_variant)
        details = {name: r.version for name, r in self.runners.items()}
        if self.profiles is not None:
            details["users"] = str(len(self.profiles.users))
            details["glances"] = str(len(self.profiles.glances))
        return T.HealthResponse(
            live=True,
            ready=ready,
            status=status,
            tier=self.tier,
            model_version=runner.version if runner else None,
            profile_version=self.profiles.version if self.profiles else None,
            shard=self.config.shard,
            details=details,
        )

    async def predict(self, request: Any) -> Any:
        validate_predict_request(request)
        config = self.config
        shard = shard_of(request.user_id, config.num_shards)
        if shard != config.shard:
            raise invalid("user_id", f"user_id hashes to shard {shard} of {config.num_shards}; this leaf serves shard {config.shard}")
        profiles, runners = self.profiles, self.runners
        if profiles is None:
            raise T.Unavailable(message="leaf is still loading profiles and models", tier=self.tier)
        variant = request.variant or config.default_variant
        runner = runners.get(variant)
        if runner is None:
            raise invalid("variant", f"variant {variant!r} is not served by this leaf; served: {sorted(runners)}")
        request_id = request.request_id or ""
        if request.timeout_ms is not None and request.timeout_ms <= 0:
            self.metrics.deadline_dropped.inc()
            raise T.DeadlineExceeded(message=f"request {request_id} reached the leaf with no time left; not scored")

        glance_ids = request.glance_ids
        count = len(glance_ids)
        user = profiles.user(request.user_id)
        rows, known = profiles.glance_rows(glance_ids)
        scores = np.full(count, profiles.fallback_score, dtype=np.float64)
        if count:
            started = time.perf_counter()
            if known.all():
                scores[:] = runner.score(user, profiles, rows)
            elif known.any():
                scores[known] = runner.score(user, profiles, rows[known])
            self.metrics.score_seconds.labels(tier=self.tier, variant=variant).observe(time.perf_counter() - started)
        flags = np.where(known, 0, FLAG_UNKNOWN).astype(np.uint8)
        if user.cold_start:
            flags |= FLAG_COLD
            self.metrics.cold_start_users.inc()
        unknown = int(count - int(known.sum()))
        self.metrics.unknown_glances.inc(unknown)
        self.metrics.predictions.inc(count)
        return T.PredictResponse(
            scores=scores.tolist(),
            flags=flags.tobytes(),
            model_version=runner.version,
            profile_version=profiles.version,
            variant=variant,
            shard=shard,
            request_id=request_id,
            unknown_glances=unknown,
            cold_start_user=user.cold_start,
        )

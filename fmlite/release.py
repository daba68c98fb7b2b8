"""``fmlite release`` and ``fmlite rollback``: publish a new model and profile version in one safe step.

Release:

1. find the platform's leaves (``fmlite.release_wait``) before any work, so a wrong address fails fast;
2. build profiles and train into a hidden staging directory of the artifact root
   (``.release-<version>``, which no leaf reads), or take a candidate built before
   (``--candidate``, the output root of ``fmlite train``);
3. write the glance statistics (``fmlite.glance_stats``) of the data's log up to the held-out
   day into the candidate's snapshot directory, for L0's exploration policies;
4. score the candidate and the served version on the same held-out day (``fmlite.release_eval``)
   and refuse, with exit code ``EXIT_REJECTED`` and the figures, when the candidate is worse than
   the served version by more than the tolerance;
5. move the model and the snapshot into place, point ``profiles/CURRENT`` (and the Redis
   pointer, with ``--redis-url``) at the new version, and record it in ``releases.json``;
6. wait until every leaf reports the new model and profile versions, printing progress, and exit
   with ``EXIT_NOT_SERVED`` when the wait times out.

Rollback takes the newer model versions out of service, points the profile pointers at the
previous release's version, marks the current release rolled back, and waits the same way.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from fmlite import snapshot
from fmlite.glance_stats import STATS_FILE, build_glance_stats, write_glance_stats
from fmlite.release_store import ACTIVE_STATUSES, ArtifactRoot, ReleaseRecord, ReleaseStoreError
from fmlite.release_wait import DiscoveryError, discover_leaves, wait_for_versions

__all__ = [
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_NOT_SERVED",
    "EXIT_REJECTED",
    "ReleaseError",
    "PlatformTarget",
    "ReleaseConfig",
    "release",
    "rollback",
    "write_snapshot_stats",
    "write_training_stats",
]

logger = logging.getLogger(__name__)

EXIT_OK = 0
# Bad input or a failed step. Nothing was published unless the output names what was.
EXIT_FAILED = 1
# Published, but not every leaf reported the new versions before the wait timed out.
EXIT_NOT_SERVED = 3
# The candidate scored worse than the served version by more than the tolerance; nothing was published.
EXIT_REJECTED = 4


class ReleaseError(RuntimeError):
    """A release or rollback cannot go on; the message names the value and what to do."""


@dataclass(frozen=True)
class PlatformTarget:
    """Platform that serves the published versions, and the wait for its leaves."""

    # L0 address whose health call reports the L1s (and through them the leaves).
    l0: str | None = None
    # Leaf addresses; when set, L0 is not asked.
    leaves: tuple[str, ...] = ()
    # Redis profile store that the leaves read, besides the files under the root.
    redis_url: str | None = None
    redis_prefix: str = "fmlite:profiles"
    wait: bool = True
    wait_timeout_s: float = 300.0


@dataclass(frozen=True)
class ReleaseConfig:
    """Options of one ``fmlite release``."""

    root: Path
    data: Path
    target: PlatformTarget = PlatformTarget()
    # Output root of an earlier ``fmlite train`` to release instead of training now.
    candidate: Path | None = None
    metric: str = "map@50"
    # Largest drop of ``metric`` (candidate minus served, in metric units) that still publishes.
    tolerance: float = 0.01
    num_shards: int | None = None
    epochs: int | None = None
    seed: int = 7
    glance_scope: str = "all"
    text_cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.tolerance < 0:
            raise ReleaseError(f"tolerance must not be negative, got {self.tolerance}")
        if self.target.wait_timeout_s <= 0:
            raise ReleaseError(f"wait timeout must be positive, got {self.target.wait_timeout_s} s")


def _leaves(target: PlatformTarget, out: Callable[[str], None]) -> list[str]:
    if not target.wait:
        return []
    try:
        leaves = discover_leaves(l0=target.l0, leaves=target.leaves)
    except DiscoveryError as error:
        raise ReleaseError(f"{error} (or pass --no-wait to publish without waiting)") from None
    out(f"platform: {len(leaves)} leaves ({', '.join(leaves)})")
    return leaves


def _redis(target: PlatformTarget) -> Any:
    from model.publish import connect

    return connect(target.redis_url, connect_timeout_s=2.0, socket_timeout_s=60.0)


def _publish_to_redis(target: PlatformTarget, snapshot_dir: Path, out: Callable[[str], None]) -> None:
    """Copy the snapshot to the Redis store and move its pointer; activate it when the store has it already."""
    import redis

    from model.publish import PublishError, VersionExistsError, activate_version, publish_snapshot

    version = snapshot.read_manifest(snapshot_dir).version
    try:
        client = _redis(target)
        try:
            try:
                result = publish_snapshot(snapshot_dir, client=client, prefix=target.redis_prefix, keep_versions=3)
                previous = result.previous_version
            except VersionExistsError:
                previous = activate_version(client, version, prefix=target.redis_prefix)
        finally:
            client.close()
    except (PublishError, redis.RedisError, OSError) as error:
        raise ReleaseError(
            f"the files under {snapshot_dir.parent.parent} serve profiles {version}, but moving the Redis store at {target.redis_url} failed "
            f"({type(error).__name__}: {error}); it still serves its earlier version. When Redis is back, run "
            f"`fmlite publish-profiles --redis-url {target.redis_url} --prefix {target.redis_prefix} --profiles {snapshot_dir.parent} --version {version}`"
        ) from None
    out(f"the Redis store serves profiles {version} (previous version {previous})")


def _wait(target: PlatformTarget, leaves: list[str], model_version: int, profile_version: int, out: Callable[[str], None]) -> int:
    if not target.wait:
        out("not waiting for the leaves (--no-wait)")
        return EXIT_OK
    served, statuses = wait_for_versions(
        leaves, model_version=str(model_version), profile_version=str(profile_version), timeout_s=target.wait_timeout_s, out=out
    )
    if served:
        out(f"every leaf serves model {model_version} with profiles {profile_version}")
        return EXIT_OK
    behind = [status.describe() for status in statuses if not status.serves(str(model_version), str(profile_version))]
    out(f"error: after {target.wait_timeout_s:.0f} s, {len(behind)} of {len(leaves)} leaves do not serve the new versions: {'; '.join(behind)}")
    return EXIT_NOT_SERVED


def _candidate_dirs(candidate: Path) -> tuple[Path, Path, int]:
    """Return (model dir, snapshot dir, version) of a pipeline output root holding one new version."""
    models = sorted(int(p.name) for p in (candidate / "models" / "fmlite").glob("*") if p.name.isdigit())
    profiles = snapshot.list_versions(candidate / "profiles")
    if not models or not profiles:
        raise ReleaseError(f"candidate {candidate} must hold models/fmlite/<version>/ and profiles/<version>/ (the output of fmlite train --out)")
    if models[-1] != profiles[-1]:
        raise ReleaseError(f"candidate {candidate}: newest model version {models[-1]} and profile version {profiles[-1]} differ")
    version = models[-1]
    return candidate / "models" / "fmlite" / str(version), candidate / "profiles" / str(version), version


def _train(config: ReleaseConfig, staging: Path, version: int, num_shards: int, out: Callable[[str], None]) -> tuple[Path, Path]:
    from model.config import PipelineConfig
    from model.pipeline import run_pipeline

    settings = PipelineConfig(
        data_dir=config.data,
        out=staging,
        num_shards=num_shards,
        seed=config.seed,
        version=version,
        glance_scope=config.glance_scope,  # type: ignore[arg-type]
        text_cache_dir=config.text_cache_dir or config.root / "cache",
    )
    if config.epochs is not None:
        settings = replace(settings, train=replace(settings.train, epochs=config.epochs))
    out(f"training version {version} on {config.data} ({num_shards} shards) in {staging}")
    result = run_pipeline(settings)
    out(f"trained version {version}: validation AUC {result.metrics['val_auc']:.4f}, log loss {result.metrics['val_log_loss']:.4f}")
    return result.model_dir, result.snapshot_dir


def write_snapshot_stats(source: Any, snapshot_dir: Path, *, as_of_ms: int, version: int) -> Path:
    """Write the glance statistics of ``source``'s log before ``as_of_ms`` into ``snapshot_dir``.

    Every glance of the snapshot gets a row, with no impressions when the log does not show it,
    so L0's exploration can age the glances the leaves score. Returns the path of the file.
    """
    import numpy as np

    frame = source.interactions.frame
    stats = build_glance_stats(
        frame["glance_id"].to_numpy(dtype=object).astype(str),
        frame["timestamp"].to_numpy(dtype="datetime64[ms]").astype(np.int64),
        frame["peek"].to_numpy(dtype=np.int64),
        as_of_ms=as_of_ms,
        version=str(version),
        known_ids=snapshot.load_glances(snapshot_dir, verify=False).ids,
    )
    return write_glance_stats(snapshot_dir / STATS_FILE, stats)


def write_training_stats(data: str | Path, snapshot_dir: Path, *, version: int) -> Path:
    """Write the statistics of ``data``'s log up to its held-out day into a trained snapshot."""
    from fmlite.release_eval import load_held_out_day

    day, source = load_held_out_day(data)
    return write_snapshot_stats(source, snapshot_dir, as_of_ms=day.first_ms, version=version)


def release(config: ReleaseConfig, *, out: Callable[[str], None] = print) -> int:
    """Run one release (see the module docstring); return the exit code."""
    from fmlite.release_eval import compare_versions, load_held_out_day, score_version

    root = ArtifactRoot(config.root)
    leaves = _leaves(config.target, out)
    served = root.served()
    # Read before anything moves: the served versions join the history when no entry names them.
    records = root.history_with_served()
    shards = root.num_shards()
    if config.num_shards is not None and shards is not None and config.num_shards != shards:
        raise ReleaseError(f"--num-shards {config.num_shards} differs from the {shards} shards of the served snapshot; the leaves would miss users")
    out(f"served now: model {served[0]} with profiles {served[1]}" if served else f"nothing is served from {root.root} yet")

    staging: Path | None = None
    try:
        if config.candidate is not None:
            model_dir, snapshot_dir, version = _candidate_dirs(config.candidate)
            if served is not None and version <= served[0]:
                raise ReleaseError(f"candidate version {version} is not newer than the served model version {served[0]}; leaves serve the newest version")
            manifest = snapshot.read_manifest(snapshot_dir)
            if shards is not None and manifest.num_shards != shards:
                raise ReleaseError(f"candidate snapshot has {manifest.num_shards} shards, the served one {shards}")
        else:
            version = root.next_version()
            staging = root.root / f".release-{version}"
            model_dir, snapshot_dir = _train(config, staging, version, shards or config.num_shards or 2, out)

        day, source = load_held_out_day(config.data)
        write_snapshot_stats(source, snapshot_dir, as_of_ms=day.first_ms, version=version)
        out(f"scoring the held-out day {day.label} with the candidate and the served version")
        candidate_scores = score_version(day, model_dir=model_dir, snapshot_dir=snapshot_dir, label="candidate")
        served_scores = None
        if served is not None:
            served_scores = score_version(day, model_dir=root.models / str(served[0]), snapshot_dir=root.profiles / str(served[1]), label="served")
        comparison = compare_versions(day, candidate_scores, served_scores, metric=config.metric, tolerance=config.tolerance)
        out(comparison.render())
        report = {"version": version, "data": str(config.data), "gate": comparison.to_json()}
        if not comparison.accepted:
            report["outcome"] = "rejected"
            path = root.write_report(version, report)
            drop = -comparison.difference["value"] if comparison.difference else 0.0
            out(
                f"rejected: the candidate's {config.metric} is {drop:.4f} below the served version's, more than the tolerance "
                f"{config.tolerance:.4f}; nothing was published (figures in {path})"
            )
            return EXIT_REJECTED

        root.install(model_dir=model_dir, snapshot_dir=snapshot_dir, version=version)
        root.publish_profiles(version)
        report["outcome"] = "published"
        root.write_report(version, report)
        records.append(
            ReleaseRecord(
                model_version=version,
                profile_version=version,
                status="published",
                published_at=_now(),
                data=str(config.data),
                gate=comparison.to_json(),
            )
        )
        root.write_history(records)
        out(f"published model {version} and profiles {version} under {root.root}")
        if config.target.redis_url:
            _publish_to_redis(config.target, root.profiles / str(version), out)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return _wait(config.target, leaves, version, version, out)


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def rollback(root_path: Path, target: PlatformTarget, *, out: Callable[[str], None] = print) -> int:
    """Serve the release before the current one again (see the module docstring); return the exit code."""
    root = ArtifactRoot(root_path)
    records = root.history_with_served()
    active = [index for index, record in enumerate(records) if record.status in ACTIVE_STATUSES]
    if len(active) < 2:
        raise ReleaseError(f"no earlier release to roll back to in {root.history_path}: {len(active)} release(s) in service")
    current, previous = records[active[-1]], records[active[-2]]
    leaves = _leaves(target, out)
    out(f"rolling back from model {current.model_version} with profiles {current.profile_version} "
        f"to model {previous.model_version} with profiles {previous.profile_version}")
    try:
        retired = root.retire_models_after(previous.model_version)
    except ReleaseStoreError as error:
        raise ReleaseError(str(error)) from None
    root.publish_profiles(previous.profile_version)
    out(f"retired model versions {retired}; profiles/CURRENT is {previous.profile_version}")
    records[active[-1]] = replace(current, status="rolled_back")
    root.write_history(records)
    if target.redis_url:
        _publish_to_redis(target, root.profiles / str(previous.profile_version), out)
    return _wait(target, leaves, previous.model_version, previous.profile_version, out)

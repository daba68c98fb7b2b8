"""The profile and training-set build without model training, on one machine or on Spark.

``build_profiles`` reads the data, encodes the glances on this machine, then builds the user
profiles and the training set with the chosen engine:

- ``local``: ``model.user_encoder`` and ``model.dataset`` in this process (what
  ``model.pipeline`` runs);
- ``spark``: the PySpark job of ``model.spark_build`` (local mode by default, any cluster through
  ``master``).

Both engines write the same outputs under ``config.out``:

- ``profiles/<version>/`` and, with ``publish``, ``profiles/CURRENT``: the profile snapshot of
  the serving window (``fmlite.snapshot``);
- ``training/<version>/examples.parquet``: the sampled examples (``split``, ``user_id``,
  ``glance_id``, ``label``) in the order the trainer reads them;
- ``training/<version>/user_profiles.npz``: the profiles of the history window that the
  training examples are scored with, and ``training/<version>/counts.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmlite.snapshot import publish_version, write_snapshot
from model.config import PipelineConfig
from model.dataset import TrainingSet, Windows, build_training_set, profile_events, resolve_windows
from model.glance_encoder import GlanceFeatures, encode_glances
from model.mind import read_mind
from model.pipeline import fallback_probability
from model.tables import GlanceTable, SourceData
from model.text_encoder import TextEncoder
from model.user_encoder import UserProfiles, build_user_profiles

__all__ = ["ENGINES", "ProfileBuildResult", "build_profiles", "read_training_output"]

logger = logging.getLogger(__name__)

ENGINES = ("local", "spark")


@dataclass(frozen=True)
class ProfileBuildResult:
    """Output directories, version and counts of one build."""

    version: int
    engine: str
    snapshot_dir: Path
    training_dir: Path
    users: int
    glances: int
    counts: dict[str, Any]
    seconds: float


def _choose_version(config: PipelineConfig) -> int:
    profiles, training = config.out / "profiles", config.out / "training"

    def taken(version: int) -> bool:
        return (profiles / str(version)).exists() or (training / str(version)).exists()

    if config.version is not None:
        if taken(config.version):
            raise FileExistsError(f"version {config.version} already exists under {profiles} or {training}; choose another version")
        return config.version
    version = int(dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S"))
    while taken(version):
        version += 1
    return version


def _select_glances(data: SourceData, scope: str) -> GlanceTable:
    if scope == "all":
        return data.glances
    logged = set(data.interactions.frame["glance_id"].tolist()) | set(data.history.frame["glance_id"].tolist())
    frame = data.glances.frame
    return GlanceTable(frame.loc[frame["glance_id"].isin(logged)])


def _local_engine(data: SourceData, windows: Windows, glances: GlanceFeatures, config: PipelineConfig) -> tuple[UserProfiles, UserProfiles, TrainingSet]:
    history_length = windows.history[1] - windows.history[0] + 1
    training_profiles = build_user_profiles(
        profile_events(data, windows, days=windows.history), glances,
        present_day=windows.history[1], window_days=history_length, config=config.user_encoder,
    )
    serving_profiles = build_user_profiles(
        profile_events(data, windows, days=windows.serving_history), glances,
        present_day=windows.serving_history[1], window_days=history_length, config=config.user_encoder,
    )
    training = build_training_set(data, windows, glances=glances, users=training_profiles, sampling=config.sampling, seed=config.seed)
    return training_profiles, serving_profiles, training


def _write_log_parquet(data: SourceData, directory: Path) -> None:
    """Write the interactions and history clicks for Spark, timestamps in microseconds (Spark reads no nanoseconds)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    interactions = data.interactions.frame.loc[:, ["user_id", "glance_id", "timestamp", "peek"]]
    pq.write_table(
        pa.Table.from_pandas(interactions, preserve_index=False),
        directory / "interactions.parquet",
        coerce_timestamps="us",
        allow_truncated_timestamps=True,
    )
    if len(data.history):
        pq.write_table(pa.Table.from_pandas(data.history.frame.loc[:, ["user_id", "glance_id"]], preserve_index=False), directory / "history.parquet")


def _write_training(directory: Path, training: TrainingSet, profiles: UserProfiles) -> None:
    staging = directory.parent / f".{directory.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    parts = []
    for name in ("train", "validation"):
        examples = getattr(training, name)
        parts.append(pd.DataFrame({"split": name, "user_id": examples.user_ids, "glance_id": examples.glance_ids, "label": examples.labels}))
    pd.concat(parts, ignore_index=True).to_parquet(staging / "examples.parquet", index=False)
    np.savez(
        staging / "user_profiles.npz",
        ids=profiles.ids.astype(str), meta=profiles.meta, image=profiles.image, text=profiles.text,
        peeks=profiles.peeks, impressions=profiles.impressions,
        **{f"cold_start_{section}": vector for section, vector in profiles.cold_start.items()},
    )
    (staging / "counts.json").write_text(json.dumps(training.counts, indent=1, sort_keys=True, default=str))
    os.rename(staging, directory)


def read_training_output(directory: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, Any]]:
    """Return (examples, training-window profiles, counts) written by ``build_profiles``."""
    directory = Path(directory)
    examples = pd.read_parquet(directory / "examples.parquet")
    with np.load(directory / "user_profiles.npz", allow_pickle=False) as archive:
        profiles = {key: archive[key] for key in archive.files}
    return examples, profiles, json.loads((directory / "counts.json").read_text())


def build_profiles(
    config: PipelineConfig,
    *,
    engine: str = "local",
    spark_master: str | None = None,
    publish: bool = True,
    spark_session: Any = None,
) -> ProfileBuildResult:
    """Build the profile snapshot and the training set of ``config`` with ``engine``; see the module doc."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; available: {', '.join(ENGINES)}")
    started = time.perf_counter()
    version = _choose_version(config)
    data = read_mind(config.data_dir)
    windows = resolve_windows(data, config.windows)
    encoder = TextEncoder(model_path=config.text_model_path, cache_dir=config.cache_dir)
    glances = encode_glances(_select_glances(data, config.glance_scope), text_encoder=encoder)
    logger.info("profile build %d (%s engine): %d glances encoded, windows %s", version, engine, len(glances), json.dumps(windows.to_json()))

    if engine == "local":
        training_profiles, serving_profiles, training = _local_engine(data, windows, glances, config)
    else:
        from model.spark_build import DEFAULT_MASTER, build_with_spark

        with tempfile.TemporaryDirectory(prefix="fmlite-spark-input-") as staging:
            _write_log_parquet(data, Path(staging))
            training_profiles, serving_profiles, training = build_with_spark(
                staging, windows, glances, config=config, master=spark_master or DEFAULT_MASTER, session=spark_session,
            )

    snapshot_root = config.out / "profiles"
    snapshot_dir = write_snapshot(
        snapshot_root,
        version=version,
        num_shards=config.num_shards,
        meta_columns=list(glances.vocabulary.columns),
        glances={"ids": glances.ids, "meta": glances.meta, "image": glances.image, "text": glances.text},
        users=serving_profiles.tables(),
        cold_start=serving_profiles.cold_start,
        fallback_score=fallback_probability(training),
        info={
            "windows": windows.to_json(),
            "text_encoder": glances.encoder_name,
            "user_encoder": dict(serving_profiles.options),
            "glance_scope": config.glance_scope,
            "engine": engine,
        },
    )
    if publish:
        publish_version(snapshot_root, version)
    training_dir = config.out / "training" / str(version)
    training_dir.parent.mkdir(parents=True, exist_ok=True)
    _write_training(training_dir, training, training_profiles)
    seconds = time.perf_counter() - started
    logger.info("profile build %d (%s engine) done in %.1f s: snapshot %s, training set %s", version, engine, seconds, snapshot_dir, training_dir)
    return ProfileBuildResult(
        version=version,
        engine=engine,
        snapshot_dir=snapshot_dir,
        training_dir=training_dir,
        users=len(serving_profiles),
        glances=len(glances),
        counts=training.counts,
        seconds=seconds,
    )

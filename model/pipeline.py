"""The offline pipeline: MIND data -> encoders -> FM-Lite training -> SavedModel + profile snapshot.

``run_pipeline`` writes, under ``config.out``:

- ``models/fmlite/<version>/``: the SavedModel (TF Serving layout, ``serving_default``);
- ``profiles/<version>/`` and ``profiles/CURRENT``: the published profile snapshot;
- ``reports/train-<version>.json``: counts, windows, validation metrics, parameters, timings;
- ``cache/``: the text-embedding cache (unless ``text_cache_dir`` points elsewhere).

Training uses profiles built over the history window. The published snapshot contains
profiles built over a window of the same length that ends the day before the test window,
which is what a daily production run would serve on the test day.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from fmlite.snapshot import publish_version, write_snapshot
from model.config import PipelineConfig
from model.dataset import (
    ExampleSet,
    TrainingSet,
    Windows,
    build_training_set,
    feature_arrays,
    load_test_day,
    profile_events,
    resolve_windows,
)
from model.export import MODEL_NAME, export_savedmodel
from model.glance_encoder import GlanceFeatures, encode_glances
from model.mind import read_mind
from model.tables import GlanceTable, SourceData
from model.text_encoder import TextEncoder
from model.train import TrainResult, train_fmlite
from model.user_encoder import UserProfiles, build_user_profiles

__all__ = ["PipelineConfig", "PipelineResult", "PipelineArtifacts", "run_pipeline", "load_test_day", "fallback_probability"]

logger = logging.getLogger(__name__)

# Rows of real features scored by both the Keras model and the reloaded SavedModel at export.
_EXPORT_CHECK_ROWS = 256


@dataclass(frozen=True)
class PipelineArtifacts:
    """In-memory products of a run, for evaluation and tests; nothing here is written to disk twice."""

    windows: Windows
    glances: GlanceFeatures
    training_profiles: UserProfiles
    serving_profiles: UserProfiles
    training_set: TrainingSet
    train_result: TrainResult


@dataclass(frozen=True)
class PipelineResult:
    """Output locations of a run (model and snapshot), their versions and the validation metrics."""

    model_dir: Path
    snapshot_dir: Path
    model_version: int
    snapshot_version: int
    report_path: Path
    metrics: dict[str, Any]
    artifacts: PipelineArtifacts = field(repr=False, compare=False)


def fallback_probability(training: TrainingSet) -> float:
    """Return the score served for glances without a profile, on the model's sub-sampled scale.

    It is the peek rate ``p`` of training-window impressions whose glance has no content,
    mapped to the odds the model learns when only a fraction ``r`` of negatives is kept:
    ``p / (p + (1 - p) r)``. Without such impressions it is the positive share of the
    training examples.
    """
    window = training.counts["window"]
    unknown_impressions = window["impressions"] - window["impressions_with_content"]
    unknown_peeks = window["peeks"] - window["peeks_with_content"]
    train = training.counts["train"]
    if train["examples"] == 0:
        return 0.5
    if unknown_impressions == 0:
        return train["positives"] / train["examples"]
    rate = unknown_peeks / unknown_impressions
    available = train["negatives_before_sampling"]
    kept = train["negatives"] / available if available else 1.0
    return float(rate / (rate + (1.0 - rate) * kept)) if rate > 0 else 0.0


@contextmanager
def _progress_output(enabled: bool) -> Iterator[None]:
    """Print this package's INFO log lines to stderr while nothing else handles them."""
    package = logging.getLogger("model")
    if not enabled or package.hasHandlers():
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    previous_level, previous_propagate = package.level, package.propagate
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    # TensorFlow may configure the root logger during the run; without this, lines would print twice.
    package.propagate = False
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(previous_level)
        package.propagate = previous_propagate


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        logger.info("step %s: started", name)
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 3)
        logger.info("step %s: done in %.1f s", name, self.seconds[name])


def _choose_version(config: PipelineConfig) -> int:
    """Return the run's version: ``config.version`` or the UTC time, raised past existing versions."""
    models = config.out / "models" / MODEL_NAME
    profiles = config.out / "profiles"

    def taken(version: int) -> bool:
        return (models / str(version)).exists() or (profiles / str(version)).exists()

    if config.version is not None:
        if taken(config.version):
            raise FileExistsError(f"version {config.version} already exists under {models} or {profiles}; choose another version")
        return config.version
    version = int(dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S"))
    # NOTE: two runs within one second get consecutive integers, which may not be valid times.
    while taken(version):
        version += 1
    return version


def _select_glances(data: SourceData, scope: str) -> GlanceTable:
    if scope == "all":
        return data.glances
    logged = set(data.interactions.frame["glance_id"].tolist()) | set(data.history.frame["glance_id"].tolist())
    frame = data.glances.frame
    return GlanceTable(frame.loc[frame["glance_id"].isin(logged)])


def _check_rows(training: TrainingSet) -> ExampleSet:
    """Return up to ``_EXPORT_CHECK_ROWS`` examples from both splits for the export check."""
    half = _EXPORT_CHECK_ROWS // 2
    parts = [training.train, training.validation]
    fields = ("user_ids", "glance_ids", "user_rows", "glance_rows", "labels")
    return ExampleSet(**{name: np.concatenate([getattr(part, name)[:half] for part in parts]) for name in fields})


def _json_ready(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_ready(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, (Path, dt.date)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    return value


def run_pipeline(config: PipelineConfig) -> PipelineResult:
    """Run the whole offline pipeline once and return where its outputs are (see the module doc)."""
    with _progress_output(config.progress):
        return _run(config)


def _run(config: PipelineConfig) -> PipelineResult:
    timer = _Timer()
    version = _choose_version(config)
    logger.info("pipeline version %d: data %s, output %s", version, config.data_dir, config.out)

    with timer.step("read"):
        data = read_mind(config.data_dir)
        windows = resolve_windows(data, config.windows)
        glance_table = _select_glances(data, config.glance_scope)
    logger.info("windows: %s", json.dumps(windows.to_json()))

    with timer.step("encode_glances"):
        encoder = TextEncoder(model_path=config.text_model_path, cache_dir=config.cache_dir)
        glances = encode_glances(glance_table, text_encoder=encoder)

    with timer.step("user_profiles"):
        history_length = windows.history[1] - windows.history[0] + 1
        training_profiles = build_user_profiles(
            profile_events(data, windows, days=windows.history),
            glances,
            present_day=windows.history[1],
            window_days=history_length,
            config=config.user_encoder,
        )
        serving_profiles = build_user_profiles(
            profile_events(data, windows, days=windows.serving_history),
            glances,
            present_day=windows.serving_history[1],
            window_days=history_length,
            config=config.user_encoder,
        )

    with timer.step("training_set"):
        training = build_training_set(
            data, windows, glances=glances, users=training_profiles, sampling=config.sampling, seed=config.seed
        )

    with timer.step("train"):
        result = train_fmlite(
            training,
            users=training_profiles,
            glances=glances,
            model_config=config.model,
            train_config=config.train,
            seed=config.seed,
        )

    with timer.step("export"):
        check = feature_arrays(_check_rows(training), users=training_profiles, glances=glances)
        model_dir = export_savedmodel(
            result.model,
            models_root=config.out / "models",
            version=version,
            check_inputs=check,
            metadata={
                "model_version": version,
                "snapshot_version": version,
                "meta_columns": list(glances.vocabulary.columns),
                "embedding_dim": int(glances.text.shape[1]),
                "text_encoder": glances.encoder_name,
                "config": _json_ready(config.model),
            },
        )

    fallback = fallback_probability(training)
    with timer.step("snapshot"):
        snapshot_root = config.out / "profiles"
        snapshot_dir = write_snapshot(
            snapshot_root,
            version=version,
            num_shards=config.num_shards,
            meta_columns=list(glances.vocabulary.columns),
            glances={"ids": glances.ids, "meta": glances.meta, "image": glances.image, "text": glances.text},
            users=serving_profiles.tables(),
            cold_start=serving_profiles.cold_start,
            fallback_score=fallback,
            info={
                "model_version": version,
                "windows": windows.to_json(),
                "text_encoder": glances.encoder_name,
                "user_encoder": _json_ready(serving_profiles.options),
                "glance_scope": config.glance_scope,
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            },
        )
        publish_version(snapshot_root, version)

    metrics = {
        "val_log_loss": result.val_log_loss,
        "val_auc": result.val_auc,
        "train_log_loss": result.train_log_loss,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "parameter_count": result.parameter_count,
    }
    report = {
        "version": version,
        "model_dir": str(model_dir),
        "snapshot_dir": str(snapshot_dir),
        "data_dir": str(config.data_dir),
        "windows": windows.to_json(),
        "counts": {
            "glances": len(glances),
            "glances_with_content_in_data": len(data.glances),
            "interactions": len(data.interactions),
            "history_clicks": len(data.history),
            "users_in_log": int(data.interactions.frame["user_id"].nunique()),
            "training_profiles": len(training_profiles),
            "serving_profiles": len(serving_profiles),
            "texts_encoded": encoder.encoded_count,
            **training.counts,
        },
        "metrics": metrics,
        "epochs": result.history,
        "fallback_score": fallback,
        "timings_seconds": timer.seconds,
        "config": _json_ready(config),
    }
    reports = config.out / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    report_path = reports / f"train-{version}.json"
    temporary = report_path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(_json_ready(report), indent=1, sort_keys=True))
    os.replace(temporary, report_path)
    logger.info("pipeline version %d done: model %s, snapshot %s, report %s", version, model_dir, snapshot_dir, report_path)

    return PipelineResult(
        model_dir=model_dir,
        snapshot_dir=snapshot_dir,
        model_version=version,
        snapshot_version=version,
        report_path=report_path,
        metrics=metrics,
        artifacts=PipelineArtifacts(
            windows=windows,
            glances=glances,
            training_profiles=training_profiles,
            serving_profiles=serving_profiles,
            training_set=training,
            train_result=result,
        ),
    )


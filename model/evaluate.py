"""Offline comparison of FM-Lite with the cosine baseline, Linear, Dense and Wide & Deep, plus ablations.

Every model is trained on the same training set (same profiles, same sub-sampled negatives,
same train/validation users) and scored on the same held-out day. Trainable models share one
loop and one tuning grid (``model.evaluate_fit``). FM-Lite is the serving architecture of
``model.fmlite_model`` with its default layer widths. Each ablation row retrains FM-Lite at the
learning rate chosen for the main FM-Lite row, with one change: no beta-interval
normalisation of peek rates, no recency decay, or negatives sub-sampled at 1:1, 4:1 or not
at all. The main row uses 2:1. A simulated dataset (with ``truth.npz``) adds an oracle row
that ranks by the true click probability: the ceiling of every metric on that data.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np

from model.baselines import DISPLAY_NAMES, FMLITE_NAMES, MODEL_NAMES, cosine_scores, model_builders
from model.bootstrap import Interval, UserBootstrap
from model.config import FMLiteConfig, UserEncoderConfig, WindowConfig
from model.dataset import ExampleSet, feature_arrays
from model.evaluate_data import EvaluationData, TestDay, prepare_data
from model.evaluate_fit import FitConfig, TuningResult, tune_model
from model.evaluate_metrics import MetricSet, TestLayout, metric_names, score_metrics
from model.fmlite_model import build_fmlite
from model.simulator_truth import TRUTH_FILE, HiddenPreferences
from model.train import predict
from model.user_encoder import beta_interval_factor

__all__ = ["EvaluationConfig", "ModelRecord", "EvaluationResult", "Ablation", "ABLATIONS", "NARROW_META", "run_evaluation"]

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = UserEncoderConfig(normalize=True, decay=True)
DEFAULT_NEGATIVES = 2.0
# The paper's meta section: plain peek rates, no log lift.
PLAIN_RATES_ENCODER = UserEncoderConfig(meta_log_lift=False)
# The FM-Lite meta towers of the first design: 32 ReLU units, then 16 dimensions, so that
# <a_u_MF, a_g_MF> is a bilinear form of rank at most 16 (the "narrow_meta" ablation).
NARROW_META = FMLiteConfig(meta_units=(32, 16))


@dataclass(frozen=True)
class Ablation:
    """One change to the main FM-Lite row: user encoder, negative sampling or layer widths."""

    label: str
    encoder: UserEncoderConfig = DEFAULT_ENCODER
    negatives: float | None = DEFAULT_NEGATIVES
    fmlite: FMLiteConfig | None = None


# Ablation key -> change, keys in the order of ``model.quality_names.ABLATION_NAMES``.
ABLATIONS: dict[str, Ablation] = {
    "no_normalisation": Ablation("FM-Lite without beta-interval normalisation", encoder=UserEncoderConfig(normalize=False, decay=True)),
    "no_decay": Ablation("FM-Lite without recency decay", encoder=UserEncoderConfig(normalize=True, decay=False)),
    "no_history_imputation": Ablation(
        "FM-Lite, history clicks left out of the meta peek rates", encoder=UserEncoderConfig(impute_history=False)
    ),
    "plain_rates": Ablation(
        "FM-Lite on plain meta peek rates (no log lift, no prior)", encoder=PLAIN_RATES_ENCODER
    ),
    "narrow_meta": Ablation("FM-Lite with rank-16 meta towers (32 ReLU units, then 16)", fmlite=NARROW_META),
    "negatives_1": Ablation("FM-Lite, negatives sub-sampled 1:1", negatives=1.0),
    "negatives_4": Ablation("FM-Lite, negatives sub-sampled 4:1", negatives=4.0),
    "negatives_all": Ablation("FM-Lite, all negatives (no sub-sampling)", negatives=None),
}
# Chunk of test rows turned into dense feature arrays at once for the cosine baseline.
_COSINE_CHUNK = 20_000


@dataclass(frozen=True)
class EvaluationConfig:
    """Data, models, ablations and training budget of one evaluation run."""

    data_dir: Path
    cache_dir: Path | None = Path("var/cache")
    text_model_path: Path | None = None
    windows: WindowConfig = field(default_factory=WindowConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    fmlite: FMLiteConfig = field(default_factory=FMLiteConfig)
    ks: tuple[int, ...] = (10, 25, 50)
    models: tuple[str, ...] = MODEL_NAMES
    ablations: tuple[str, ...] = tuple(ABLATIONS)
    resamples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [name for name in self.models if name not in DISPLAY_NAMES]
        if unknown:
            raise ValueError(f"unknown models {unknown}; choose from {list(DISPLAY_NAMES)}")
        unknown = [name for name in self.ablations if name not in ABLATIONS]
        if unknown:
            raise ValueError(f"unknown ablations {unknown}; choose from {list(ABLATIONS)}")
        if self.ablations and "fmlite" not in self.models:
            raise ValueError("ablations retrain FM-Lite, so models must include 'fmlite'")
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"ks must list positive cut-offs, got {self.ks}")


@dataclass
class ModelRecord:
    """Figures of one model (or ablation) on one dataset."""

    dataset: str
    key: str
    label: str
    group: str
    parameters: int | None
    metrics: dict[str, Interval]
    tuning: list[dict[str, float]] = field(default_factory=list)
    chosen_learning_rate: float | None = None
    seconds: float = 0.0
    per_user: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.key,
            "label": self.label,
            "group": self.group,
            "parameters": self.parameters,
            "metrics": {name: interval.to_json() for name, interval in self.metrics.items()},
            "tuning": self.tuning,
            "chosen_learning_rate": self.chosen_learning_rate,
            "train_seconds": round(self.seconds, 2),
        }


@dataclass
class EvaluationResult:
    """All records, paired differences, dataset facts and the peek rates for the histogram."""

    dataset: str
    data_dir: str
    ks: tuple[int, ...]
    records: list[ModelRecord]
    differences: list[dict[str, Any]]
    facts: dict[str, Any]
    peek_rates: dict[str, np.ndarray]
    seconds: float
    calibration: list[dict[str, str]] | None = None

    def record(self, key: str) -> ModelRecord | None:
        return next((record for record in self.records if record.key == key), None)

    @property
    def metric_names(self) -> list[str]:
        return metric_names(self.ks)


def _scores_cosine(examples: ExampleSet, data: EvaluationData, encoder: UserEncoderConfig = DEFAULT_ENCODER) -> np.ndarray:
    users = data.profile_pair(encoder).serving
    parts = []
    for start in range(0, len(examples), _COSINE_CHUNK):
        chunk = ExampleSet(**{name: getattr(examples, name)[start : start + _COSINE_CHUNK] for name in ("user_ids", "glance_ids", "user_rows", "glance_rows", "labels")})
        parts.append(cosine_scores(feature_arrays(chunk, users=users, glances=data.glances)))
    return np.concatenate(parts)


def _oracle_scores(data_dir: Path, test: TestDay) -> np.ndarray | None:
    path = data_dir / TRUTH_FILE
    if not path.is_file():
        return None
    truth, user_ids, glance_ids = HiddenPreferences.load(path)
    user_rows = {user: row for row, user in enumerate(user_ids.tolist())}
    glance_rows = {glance: row for row, glance in enumerate(glance_ids.tolist())}
    try:
        users = np.fromiter((user_rows[user] for user in test.examples.user_ids.tolist()), np.int64, len(test.examples))
        glances = np.fromiter((glance_rows[glance] for glance in test.examples.glance_ids.tolist()), np.int64, len(test.examples))
    except KeyError as error:
        logger.warning("%s does not describe id %s of the test day; no oracle row", path, error)
        return None
    return truth.probabilities(users, glances)


def _builder(name: str, data: EvaluationData, config: EvaluationConfig, fmlite: FMLiteConfig | None = None) -> Callable[[], keras.Model]:
    meta_dim = int(data.glances.meta.shape[1])
    embedding_dim = int(data.glances.text.shape[1])
    if name == "fmlite":
        layers = fmlite or config.fmlite
        return lambda: build_fmlite(meta_dim=meta_dim, embedding_dim=embedding_dim, config=layers)
    build = model_builders()[name]
    return lambda: build(meta_dim=meta_dim, embedding_dim=embedding_dim)


class _Runner:
    """Train, score and measure models on one dataset, sharing the layout and the bootstrap."""

    def __init__(self, data: EvaluationData, config: EvaluationConfig, dataset: str) -> None:
        self.data = data
        self.config = config
        self.dataset = dataset
        test = data.test_day(DEFAULT_ENCODER)
        self.test = test
        self.layout = TestLayout.build(user_ids=test.examples.user_ids, impression_ids=test.impression_ids, labels=test.examples.labels)
        self.bootstrap = UserBootstrap(self.layout.users, resamples=config.resamples, seed=config.seed)

    def measure(self, scores: np.ndarray) -> MetricSet:
        return score_metrics(self.layout, scores, ks=self.config.ks, bootstrap=self.bootstrap)

    def trained(
        self,
        name: str,
        *,
        encoder: UserEncoderConfig,
        negatives: float | None,
        learning_rates: tuple[float, ...] | None = None,
        fmlite: FMLiteConfig | None = None,
    ) -> tuple[TuningResult, np.ndarray]:
        training = self.data.training_set(encoder, negatives)
        profiles = self.data.profile_pair(encoder)
        tuning = tune_model(
            _builder(name, self.data, self.config, fmlite),
            training,
            users=profiles.training,
            glances=self.data.glances,
            config=self.config.fit,
            seed=self.config.seed,
            learning_rates=learning_rates,
        )
        test = self.data.test_day(encoder)
        scores = predict(tuning.best.model, test.examples, users=profiles.serving, glances=self.data.glances, batch_size=4096)
        return tuning, scores

    def record(self, key: str, label: str, group: str, scores: np.ndarray, *, tuning: TuningResult | None = None, parameters: int | None = None) -> ModelRecord:
        measured = self.measure(scores)
        logger.info("%s: %s", label, ", ".join(f"{name} {interval.value:.4f}" for name, interval in measured.intervals.items()))
        return ModelRecord(
            dataset=self.dataset,
            key=key,
            label=label,
            group=group,
            parameters=parameters,
            metrics=measured.intervals,
            tuning=tuning.trials if tuning else [],
            chosen_learning_rate=tuning.best.learning_rate if tuning else None,
            seconds=tuning.seconds if tuning else 0.0,
            per_user=measured.per_user,
        )


def _differences(records: list[ModelRecord], bootstrap: UserBootstrap, ks: tuple[int, ...]) -> list[dict[str, Any]]:
    """Return paired FM-Lite-minus-model intervals of every per-user metric, for each other comparison model."""
    rows = []
    for fmlite in [record for record in records if record.key in FMLITE_NAMES]:
        rows += _differences_of(fmlite, records, bootstrap, ks)
    return rows


def _differences_of(fmlite: ModelRecord, records: list[ModelRecord], bootstrap: UserBootstrap, ks: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    for other in records:
        if other.group != "comparison" or other.key in FMLITE_NAMES:
            continue
        for metric in [f"map@{k}" for k in ks] + [f"mprr@{k}" for k in ks]:
            paired = bootstrap.difference(fmlite.per_user[metric], other.per_user[metric])
            rows.append(
                {
                    "metric": metric,
                    "model": fmlite.key,
                    "versus": other.key,
                    "difference": paired.to_json(),
                    "relative": (fmlite.metrics[metric].value / other.metrics[metric].value - 1.0) if other.metrics[metric].value else None,
                    "intervals_overlap": fmlite.metrics[metric].overlaps(other.metrics[metric]),
                }
            )
    return rows


def _peek_rates(data: EvaluationData) -> dict[str, np.ndarray]:
    """Return users' peek rates of the training profiles before and after the beta-interval factor."""
    profiles = data.profile_pair(DEFAULT_ENCODER).training
    rate = profiles.peeks / np.maximum(profiles.impressions, 1)
    factor = beta_interval_factor(profiles.peeks, profiles.impressions - profiles.peeks)
    return {"before": rate.astype(np.float64), "after": (rate * factor).astype(np.float64)}


def _simulation_summary(data_dir: Path) -> dict[str, Any] | None:
    from model.simulate import SUMMARY_FILE

    path = data_dir / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def run_evaluation(config: EvaluationConfig, *, dataset: str | None = None) -> EvaluationResult:
    """Train and score every selected model and ablation on ``config.data_dir``."""
    started = time.perf_counter()
    dataset = dataset or config.data_dir.name
    data = prepare_data(config.data_dir, windows=config.windows, cache_dir=config.cache_dir, text_model_path=config.text_model_path, seed=config.seed)
    runner = _Runner(data, config, dataset)
    records: list[ModelRecord] = []
    fmlite_rate: float | None = None

    for name in config.models:
        label = DISPLAY_NAMES[name]
        logger.info("model %s: started", label)
        if name == "baseline":
            records.append(runner.record(name, label, "comparison", _scores_cosine(runner.test.examples, data)))
            continue
        tuning, scores = runner.trained(name, encoder=DEFAULT_ENCODER, negatives=DEFAULT_NEGATIVES)
        if name == "fmlite":
            fmlite_rate = tuning.best.learning_rate
        records.append(runner.record(name, label, "comparison", scores, tuning=tuning, parameters=int(tuning.best.model.count_params())))

    for key in config.ablations:
        ablation = ABLATIONS[key]
        logger.info("ablation %s: started", ablation.label)
        tuning, scores = runner.trained(
            "fmlite", encoder=ablation.encoder, negatives=ablation.negatives,
            learning_rates=(fmlite_rate,) if fmlite_rate else None, fmlite=ablation.fmlite,
        )
        records.append(runner.record(f"fmlite:{key}", ablation.label, "ablation", scores, tuning=tuning, parameters=int(tuning.best.model.count_params())))

    if "baseline" in config.models:
        # Cosine has no training to adapt to the log-lift meta section, so its score on the
        # paper's plain rates is reported too.
        plain = _scores_cosine(runner.test.examples, data, PLAIN_RATES_ENCODER)
        records.append(runner.record("baseline_plain_rates", f"{DISPLAY_NAMES['baseline']} on plain meta peek rates", "reference", plain))

    oracle = _oracle_scores(config.data_dir, runner.test)
    if oracle is not None:
        records.append(runner.record("oracle", "Oracle (true click probability)", "reference", oracle))

    test = runner.test
    training = data.training_set(DEFAULT_ENCODER, DEFAULT_NEGATIVES)
    facts = {
        "windows": data.windows.to_json(),
        "glances_with_content": len(data.glances),
        "interactions": len(data.source.interactions),
        "users_in_log": int(data.source.interactions.frame["user_id"].nunique()),
        "training_set": training.counts,
        "test_day": {
            "impressions_logged": test.impressions_total,
            "candidates_logged": test.candidates_total,
            "candidates_with_content": len(test.examples),
            "peeks_with_content": int(test.examples.labels.sum()),
            "users": runner.layout.users,
            "users_with_a_peek": int(np.isfinite(records[0].per_user[f"map@{config.ks[0]}"]).sum()) if records else 0,
            "impressions_with_content": runner.layout.impressions,
            "cold_start_users": int(len(np.unique(test.examples.user_ids[test.examples.user_rows < 0]))),
        },
        "bootstrap": {"resamples": config.resamples, "confidence": 0.95, "unit": "user", "seed": config.seed},
        "fit": asdict(config.fit),
        "fmlite_config": asdict(config.fmlite),
        "text_encoder": data.glances.encoder_name,
    }
    summary = _simulation_summary(config.data_dir)
    if summary:
        facts["simulation"] = summary.get("config")
    result = EvaluationResult(
        dataset=dataset,
        data_dir=str(config.data_dir),
        ks=config.ks,
        records=records,
        differences=_differences(records, runner.bootstrap, config.ks),
        facts=facts,
        peek_rates=_peek_rates(data),
        seconds=time.perf_counter() - started,
        calibration=summary.get("calibration") if summary else None,
    )
    logger.info("evaluation of %s done in %.1f s", dataset, result.seconds)
    return result

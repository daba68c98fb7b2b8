"""One training loop and one tuning grid for every model of the comparison.

The loop matches FM-Lite's own (``model.train.train_fmlite``): Adam on binary cross-entropy,
mini-batches gathered from the profile matrices by ``model.train.make_dataset``, early stopping
on validation log loss with the best epoch's weights restored. It takes any Keras model with
the six named inputs, so FM-Lite and the baselines get exactly the same training and the same
tuning: each learning rate of the grid is trained once and the one with the lowest validation
log loss is kept.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import keras
import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from model.dataset import TrainingSet
from model.glance_encoder import GlanceFeatures
from model.train import make_dataset
from model.user_encoder import UserProfiles

__all__ = ["FitConfig", "FitResult", "TuningResult", "fit_model", "tune_model"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    """Budget shared by every trainable model: epochs, batch size, patience and the learning-rate grid."""

    epochs: int = 20
    batch_size: int = 256
    patience: int = 3
    learning_rates: tuple[float, ...] = (1e-3, 3e-3)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 0:
            raise ValueError(f"epochs and batch_size must be at least 1 and patience at least 0, got {self}")
        if not self.learning_rates or any(rate <= 0 for rate in self.learning_rates):
            raise ValueError(f"learning_rates must list positive rates, got {self.learning_rates}")


@dataclass(frozen=True)
class FitResult:
    """A trained model (best epoch restored) with its validation figures."""

    model: keras.Model
    learning_rate: float
    epochs_run: int
    best_epoch: int
    val_log_loss: float
    val_auc: float
    seconds: float


@dataclass(frozen=True)
class TuningResult:
    """The chosen fit and one summary row per learning rate tried."""

    best: FitResult
    trials: list[dict[str, float]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return float(sum(trial["seconds"] for trial in self.trials))


def _validation_figures(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    if len(labels) == 0:
        return math.nan, math.nan
    loss = float(log_loss(labels, np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7), labels=[0, 1]))
    area = float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else math.nan
    return loss, area


def fit_model(
    build: Callable[[], keras.Model],
    training: TrainingSet,
    *,
    users: UserProfiles,
    glances: GlanceFeatures,
    learning_rate: float,
    config: FitConfig,
    seed: int,
) -> FitResult:
    """Build a fresh model with ``build`` and train it with one learning rate."""
    keras.utils.set_random_seed(seed)
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss=keras.losses.BinaryCrossentropy())
    train_data = make_dataset(training.train, users=users, glances=glances, batch_size=config.batch_size, shuffle_seed=seed)
    has_validation = len(training.validation) > 0
    validation_data = make_dataset(training.validation, users=users, glances=glances, batch_size=config.batch_size) if has_validation else None
    monitor = "val_loss" if has_validation else "loss"
    stopper = keras.callbacks.EarlyStopping(monitor=monitor, patience=config.patience, restore_best_weights=True)
    started = time.perf_counter()
    history = model.fit(train_data, validation_data=validation_data, epochs=config.epochs, callbacks=[stopper], verbose=0)
    seconds = time.perf_counter() - started
    monitored = history.history.get(monitor, [math.inf])
    val_loss, val_auc = math.nan, math.nan
    if has_validation:
        scores = _predict(model, training, users=users, glances=glances, batch_size=4096)
        val_loss, val_auc = _validation_figures(training.validation.labels, scores)
    logger.info(
        "%s lr %g: %d epochs in %.1f s, best epoch %d, validation log loss %.4f, AUC %.4f",
        model.name, learning_rate, len(monitored), seconds, int(np.argmin(monitored)) + 1, val_loss, val_auc,
    )
    return FitResult(
        model=model,
        learning_rate=learning_rate,
        epochs_run=len(monitored),
        best_epoch=int(np.argmin(monitored)) + 1,
        val_log_loss=val_loss,
        val_auc=val_auc,
        seconds=seconds,
    )


def _predict(model: keras.Model, training: TrainingSet, *, users: UserProfiles, glances: GlanceFeatures, batch_size: int) -> np.ndarray:
    dataset = make_dataset(training.validation, users=users, glances=glances, batch_size=batch_size, with_labels=False)
    return np.asarray(model.predict(dataset, verbose=0), dtype=np.float64).reshape(-1)


def tune_model(
    build: Callable[[], keras.Model],
    training: TrainingSet,
    *,
    users: UserProfiles,
    glances: GlanceFeatures,
    config: FitConfig,
    seed: int,
    learning_rates: tuple[float, ...] | None = None,
) -> TuningResult:
    """Train once per learning rate of the grid and keep the fit with the lowest validation log loss.

    Without validation examples the first rate's fit is kept.
    """
    rates = learning_rates or config.learning_rates
    fits = [fit_model(build, training, users=users, glances=glances, learning_rate=rate, config=config, seed=seed) for rate in rates]
    trials = [
        {
            "learning_rate": fit.learning_rate,
            "epochs_run": fit.epochs_run,
            "best_epoch": fit.best_epoch,
            "val_log_loss": fit.val_log_loss,
            "val_auc": fit.val_auc,
            "seconds": round(fit.seconds, 2),
        }
        for fit in fits
    ]
    losses = [fit.val_log_loss if math.isfinite(fit.val_log_loss) else math.inf for fit in fits]
    return TuningResult(best=fits[int(np.argmin(losses))], trials=trials)

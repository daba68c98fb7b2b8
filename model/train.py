"""Training loop of FM-Lite: Adam, binary cross-entropy, early stopping on validation loss.

Examples reach the model as row numbers. A ``tf.data`` pipeline gathers the feature rows per
batch from the profile matrices, so no copy of every pair's features is ever built.

Validation log loss and AUC are logged per epoch (Keras metrics) and computed again with
scikit-learn on the restored best weights for the report. Validation negatives are sub-sampled
like the training ones, so the log loss reflects that class balance (1:2 by default), not the
raw peek rate.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import log_loss, roc_auc_score

from model.config import FMLiteConfig, TrainConfig
from model.dataset import ExampleSet, TrainingSet
from model.fmlite_model import SECTIONS, build_fmlite, parameter_count
from model.glance_encoder import GlanceFeatures
from model.user_encoder import UserProfiles

__all__ = ["TrainingError", "TrainResult", "make_dataset", "predict", "train_fmlite"]

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot start (no examples) or produced a model that is not finite."""


@dataclass(frozen=True)
class TrainResult:
    """The trained model (best validation epoch restored) and its metrics."""

    model: keras.Model
    history: list[dict[str, float]]
    best_epoch: int
    val_log_loss: float | None
    val_auc: float | None
    train_log_loss: float
    seconds: float
    parameter_count: int


class _ProgressLog(keras.callbacks.Callback):
    """Log one line per epoch with the training and validation metrics and the epoch time."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.started = 0.0
        self.rows: list[dict[str, float]] = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        row = {key: float(value) for key, value in (logs or {}).items()}
        row["epoch"] = epoch + 1
        row["seconds"] = time.perf_counter() - self.started
        self.rows.append(row)
        metrics = " ".join(f"{key} {value:.4f}" for key, value in sorted(row.items()) if key not in ("epoch", "seconds"))
        logger.info("epoch %d/%d: %s (%.1f s)", epoch + 1, self.epochs, metrics, row["seconds"])


def _user_matrix(users: UserProfiles, section: str) -> np.ndarray:
    """Return the user section matrix with the cold-start profile appended as its last row."""
    return np.vstack([getattr(users, section), np.asarray(users.cold_start[section], np.float32)[None, :]]).astype(np.float32)


def make_dataset(
    examples: ExampleSet,
    *,
    users: UserProfiles,
    glances: GlanceFeatures,
    batch_size: int,
    shuffle_seed: int | None = None,
    with_labels: bool = True,
) -> tf.data.Dataset:
    """Return a batched dataset of the six model inputs (and labels) of ``examples``."""
    user_tables = {section: tf.constant(_user_matrix(users, section)) for section in SECTIONS}
    glance_tables = {section: tf.constant(getattr(glances, section).astype(np.float32)) for section in SECTIONS}
    cold_row = len(users)
    user_rows = np.where(examples.user_rows >= 0, examples.user_rows, cold_row).astype(np.int64)

    dataset = tf.data.Dataset.from_tensor_slices((user_rows, examples.glance_rows.astype(np.int64), examples.labels.astype(np.float32)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(examples), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)

    def gather(user_row: tf.Tensor, glance_row: tf.Tensor, label: tf.Tensor) -> Any:
        features = {}
        for section in SECTIONS:
            features[f"user_{section}"] = tf.gather(user_tables[section], user_row)
            features[f"glance_{section}"] = tf.gather(glance_tables[section], glance_row)
        return (features, label[:, None]) if with_labels else features

    return dataset.map(gather).prefetch(2)


def predict(model: keras.Model, examples: ExampleSet, *, users: UserProfiles, glances: GlanceFeatures, batch_size: int = 1024) -> np.ndarray:
    """Return the model's peek probabilities for ``examples`` as a float32 vector."""
    if len(examples) == 0:
        return np.zeros(0, dtype=np.float32)
    dataset = make_dataset(examples, users=users, glances=glances, batch_size=batch_size, with_labels=False)
    return np.asarray(model.predict(dataset, verbose=0), dtype=np.float32).reshape(-1)


def _binary_metrics(labels: np.ndarray, scores: np.ndarray) -> tuple[float | None, float | None]:
    if len(labels) == 0:
        return None, None
    loss = float(log_loss(labels, np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7), labels=[0, 1]))
    if len(np.unique(labels)) < 2:
        logger.warning("validation set contains one class only (%d examples), so its AUC is undefined", len(labels))
        return loss, None
    return loss, float(roc_auc_score(labels, scores))


def train_fmlite(
    training: TrainingSet,
    *,
    users: UserProfiles,
    glances: GlanceFeatures,
    model_config: FMLiteConfig,
    train_config: TrainConfig,
    seed: int,
) -> TrainResult:
    """Train FM-Lite on ``training.train``, early-stopping on ``training.validation`` log loss.

    Without validation examples the loop stops on training loss and the validation metrics
    are None.
    """
    if len(training.train) == 0:
        raise TrainingError("the training split is empty: no impression in the training window has content; widen the training window or check the data")
    keras.utils.set_random_seed(seed)
    if train_config.deterministic:
        # NOTE: process-wide and not undone: every later TensorFlow op in this process runs its
        # deterministic kernel, which can be slower, and an op without one raises an error.
        tf.config.experimental.enable_op_determinism()

    model = build_fmlite(meta_dim=glances.meta.shape[1], embedding_dim=glances.text.shape[1], config=model_config)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=train_config.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc")],
    )
    params = parameter_count(model)
    logger.info("FM-Lite model: %d parameters; training on %d examples, validating on %d", params, len(training.train), len(training.validation))

    train_data = make_dataset(training.train, users=users, glances=glances, batch_size=train_config.batch_size, shuffle_seed=seed)
    has_validation = len(training.validation) > 0
    validation_data = (
        make_dataset(training.validation, users=users, glances=glances, batch_size=train_config.batch_size) if has_validation else None
    )
    monitor = "val_loss" if has_validation else "loss"
    progress = _ProgressLog(train_config.epochs)
    stopper = keras.callbacks.EarlyStopping(monitor=monitor, patience=train_config.patience, restore_best_weights=True)

    started = time.perf_counter()
    # shuffle=False because the dataset shuffles itself (seeded) and Keras cannot shuffle a tf.data.Dataset.
    model.fit(
        train_data,
        validation_data=validation_data,
        epochs=train_config.epochs,
        callbacks=[progress, stopper],
        shuffle=False,
        verbose=0,
    )
    seconds = time.perf_counter() - started

    monitored = [row.get(monitor, math.inf) for row in progress.rows]
    best_epoch = int(np.argmin(monitored)) + 1
    train_scores = predict(model, training.train, users=users, glances=glances)
    if not np.all(np.isfinite(train_scores)):
        raise TrainingError("the trained model returns NaN or inf scores on the training examples")
    train_loss, _ = _binary_metrics(training.train.labels, train_scores)
    val_loss, val_auc = _binary_metrics(training.validation.labels, predict(model, training.validation, users=users, glances=glances))
    logger.info(
        "trained %d epochs in %.1f s, best epoch %d: validation log loss %s, AUC %s",
        len(progress.rows), seconds, best_epoch,
        "n/a" if val_loss is None else f"{val_loss:.4f}", "n/a" if val_auc is None else f"{val_auc:.4f}",
    )
    return TrainResult(
        model=model,
        history=progress.rows,
        best_epoch=best_epoch,
        val_log_loss=val_loss,
        val_auc=val_auc,
        train_log_loss=float(train_loss) if train_loss is not None else math.nan,
        seconds=seconds,
        parameter_count=params,
    )

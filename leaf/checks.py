"""Checks a model version and a profile version pass before a leaf serves them together.

- ``replay_warmup``: the version's recorded warm-up requests (``fmlite.warmup_records``) are
  scored. Every score must be finite, one per row, and within ``tolerance`` of the score the
  export recorded. The warm-up also pays for tracing and memory allocation before traffic does.
- ``check_compatible``: the model's input widths match the profiles' layout, and the meta
  columns the model was trained on (``assets.extra/fmlite_model.json``) are the profiles'.
- ``check_scores``: the bound runner scores chunks of the given sizes for the cold-start user
  with finite probabilities in [0, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from fmlite.warmup_records import WarmupRecordError, read_warmup_records
from leaf.model_files import ModelLoadError
from leaf.profiles import ProfileCache
from leaf.runners import ModelRunner, PairwiseModel

__all__ = ["CheckError", "replay_warmup", "check_compatible", "check_scores"]


class CheckError(ModelLoadError):
    """A model or profile version failed a check; the leaf keeps serving what it had."""


def replay_warmup(runner: PairwiseModel, model_dir: str | Path, *, tolerance: float) -> int:
    """Score the recorded warm-up requests of ``model_dir``; return how many ran."""
    try:
        records = read_warmup_records(model_dir)
    except WarmupRecordError as error:
        raise CheckError(str(error)) from error
    for number, record in enumerate(records):
        scores = np.asarray(runner.predict_arrays(record.inputs), np.float64).reshape(-1)
        if scores.shape != (record.rows,):
            raise CheckError(f"model {runner.name} version {runner.version}: warm-up request {number} of {record.rows} rows returned shape {scores.shape}")
        if not np.all(np.isfinite(scores)):
            raise CheckError(f"model {runner.name} version {runner.version}: warm-up request {number} returned NaN or inf scores")
        if record.expected is not None:
            difference = float(np.max(np.abs(scores - record.expected))) if record.rows else 0.0
            if not difference <= tolerance:
                raise CheckError(
                    f"model {runner.name} version {runner.version}: warm-up request {number} scores differ from the recorded "
                    f"scores by {difference:.3g}, above the tolerance {tolerance:g}"
                )
    return len(records)


def check_compatible(runner: PairwiseModel, profiles: ProfileCache) -> None:
    """Raise ``CheckError`` when the model's inputs do not fit the profiles' feature layout."""
    manifest = profiles.manifest
    expected = {
        "user_meta": manifest.meta_dim,
        "glance_meta": manifest.meta_dim,
        "user_image": manifest.embedding_dim,
        "glance_image": manifest.embedding_dim,
        "user_text": manifest.embedding_dim,
        "glance_text": manifest.embedding_dim,
    }
    wrong = {name: (runner.input_widths.get(name), width) for name, width in expected.items() if runner.input_widths.get(name) != width}
    if wrong:
        raise CheckError(
            f"model {runner.name} version {runner.version} does not fit profiles {profiles.version}: input widths (model, profiles) {wrong}"
        )
    columns = runner.metadata.get("meta_columns")
    if columns is not None and tuple(columns) != tuple(manifest.meta_columns):
        differing = sorted(set(columns) ^ set(manifest.meta_columns))[:5]
        raise CheckError(
            f"model {runner.name} version {runner.version} was trained on other meta columns than profiles {profiles.version} "
            f"(first differences: {differing or 'same names, other order'})"
        )


def check_scores(runner: ModelRunner, profiles: ProfileCache, sizes: Sequence[int]) -> None:
    """Score chunks of ``sizes`` rows for the cold-start user; raise ``CheckError`` on invalid scores."""
    for size in sizes:
        rows = np.arange(size) % len(profiles.glances)
        scores = np.asarray(runner.score(profiles.cold_start, profiles, rows))
        if scores.shape != (size,):
            raise CheckError(f"runner {runner.name} version {runner.version} returned shape {scores.shape} for {size} rows")
        if not (np.all(np.isfinite(scores)) and np.all((scores >= 0.0) & (scores <= 1.0))):
            raise CheckError(f"runner {runner.name} version {runner.version} returned scores outside [0, 1] or NaN for {size} rows")

"""Release gate: score two served versions (model + profile snapshot) on the same held-out day.

A version is scored as the platform would serve it: each held-out candidate's user is looked up
in the version's snapshot (the cold-start profile when missing), its glance too (the snapshot's
fallback score when missing), and known pairs are scored by the version's SavedModel. The rows
are the held-out day's candidates whose glance has content in the release's data, as the offline
evaluation defines them. MAP@k is computed per user over the user's candidates of the day, and the
paired bootstrap interval over users gives the uncertainty of the difference.

The candidate is rejected when ``candidate - served < -tolerance`` on the gate metric
(default MAP@50): the tolerance is the largest drop, in metric units, that still publishes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fmlite import snapshot
from fmlite.signature import INPUT_NAMES, OUTPUT_NAME, SIGNATURE_NAME

__all__ = ["ReleaseGateError", "HeldOutDay", "VersionScores", "Comparison", "load_held_out_day", "score_version", "compare_versions"]

logger = logging.getLogger(__name__)

# Rows per SavedModel call; 4,096 rows of 913 float32 columns per side are about 30 MB.
_BATCH_ROWS = 4096
GATE_METRICS = ("map@10", "map@25", "map@50", "auc")


class ReleaseGateError(RuntimeError):
    """A version cannot be scored: a missing file, a model that does not fit its profiles, no held-out rows."""


@dataclass(frozen=True)
class HeldOutDay:
    """Candidates of the held-out day with content, one row per (impression, glance)."""

    label: str
    user_ids: np.ndarray
    glance_ids: np.ndarray
    impression_ids: np.ndarray
    labels: np.ndarray
    first_ms: int

    def __len__(self) -> int:
        return len(self.labels)


def load_held_out_day(data: str | Path) -> tuple[HeldOutDay, Any]:
    """Read ``data`` (MIND or Parquet) and return its held-out day and the source tables.

    The windows are the pipeline's defaults (``model.config.WindowConfig``), so the day is the
    one that the training run of the same data held out.
    """
    from model.config import WindowConfig
    from model.dataset import held_out_impressions, resolve_windows
    from model.evaluate_data import read_source

    source = read_source(data)
    windows = resolve_windows(source, WindowConfig())
    impressions = held_out_impressions(source, windows)
    if impressions.empty:
        raise ReleaseGateError(f"the held-out window {windows.to_json()['test']} of {data} contains no impression")
    exploded = impressions.explode(["glance_ids", "labels"], ignore_index=True)
    with_content = exploded["glance_ids"].isin(set(source.glances.frame["glance_id"].tolist()))
    rows = exploded.loc[with_content]
    if rows.empty:
        raise ReleaseGateError(f"no candidate of the held-out day {windows.to_json()['test']} of {data} has content")
    test = windows.to_json()["test"]
    label = test["first"] if test["first"] == test["last"] else f"{test['first']}..{test['last']}"
    first_ms = int(np.datetime64(windows.date_of(windows.test[0]), "ms").astype(np.int64))
    day = HeldOutDay(
        label=label,
        user_ids=rows["user_id"].to_numpy(dtype=object).astype(str),
        glance_ids=rows["glance_ids"].to_numpy(dtype=object).astype(str),
        impression_ids=rows["impression_id"].to_numpy(dtype=np.int64),
        labels=rows["labels"].to_numpy(dtype=np.int64),
        first_ms=first_ms,
    )
    return day, source


@dataclass(frozen=True)
class VersionScores:
    """One version's scores of the held-out rows and what it knew of them."""

    label: str
    model_version: str
    profile_version: str
    scores: np.ndarray
    cold_start_rows: int
    unknown_glance_rows: int


def _all_users(directory: Path, manifest: snapshot.Manifest) -> snapshot.FeatureTable:
    tables = [snapshot.load_users(directory, shard, manifest) for shard in range(manifest.num_shards)]
    return snapshot.FeatureTable(
        ids=np.concatenate([t.ids for t in tables]),
        meta=np.concatenate([t.meta for t in tables]),
        image=np.concatenate([t.image for t in tables]),
        text=np.concatenate([t.text for t in tables]),
    )


def score_version(day: HeldOutDay, *, model_dir: Path, snapshot_dir: Path, label: str) -> VersionScores:
    """Score the held-out rows with the SavedModel in ``model_dir`` and the snapshot in ``snapshot_dir``."""
    import tensorflow as tf

    for path in (model_dir / "saved_model.pb", snapshot_dir / "manifest.json"):
        if not path.exists():
            raise ReleaseGateError(f"{label} version is incomplete: {path} is missing")
    manifest = snapshot.read_manifest(snapshot_dir)
    glances = snapshot.load_glances(snapshot_dir, manifest)
    users = _all_users(snapshot_dir, manifest)
    glance_index, user_index = glances.index(), users.index()
    glance_rows = np.fromiter((glance_index.get(g, -1) for g in day.glance_ids.tolist()), np.int64, len(day))
    user_rows = np.fromiter((user_index.get(u, -1) for u in day.user_ids.tolist()), np.int64, len(day))
    known = glance_rows >= 0
    scores = np.full(len(day), manifest.fallback_score, dtype=np.float64)

    function = tf.saved_model.load(str(model_dir)).signatures[SIGNATURE_NAME]
    widths = {name: int(spec.shape[1]) for name, spec in function.structured_input_signature[1].items()}
    expected = {"meta": manifest.meta_dim, "image": manifest.embedding_dim, "text": manifest.embedding_dim}
    for side in ("user", "glance"):
        for section, width in expected.items():
            if widths.get(f"{side}_{section}") != width:
                raise ReleaseGateError(
                    f"{label} model {model_dir} takes {side}_{section} of width {widths.get(f'{side}_{section}')}, "
                    f"its profiles {snapshot_dir} have width {width}"
                )
    positions = np.flatnonzero(known)
    for start in range(0, len(positions), _BATCH_ROWS):
        batch = positions[start : start + _BATCH_ROWS]
        inputs = {}
        for section in ("meta", "image", "text"):
            user_section = np.tile(manifest.cold_start[section], (len(batch), 1)).astype(np.float32)
            has_profile = user_rows[batch] >= 0
            user_section[has_profile] = getattr(users, section)[user_rows[batch][has_profile]]
            inputs[f"user_{section}"] = user_section
            inputs[f"glance_{section}"] = getattr(glances, section)[glance_rows[batch]]
        output = function(**{name: tf.constant(inputs[name]) for name in INPUT_NAMES})[OUTPUT_NAME]
        scores[batch] = np.asarray(output, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(scores)):
        raise ReleaseGateError(f"{label} version scored {int((~np.isfinite(scores)).sum())} held-out rows as NaN or infinite")
    logger.info("scored %d held-out rows with the %s version (model %s, profiles %s)", len(day), label, model_dir.name, manifest.version)
    return VersionScores(
        label=label,
        model_version=model_dir.name,
        profile_version=str(manifest.version),
        scores=scores,
        cold_start_rows=int((user_rows < 0).sum()),
        unknown_glance_rows=int((~known).sum()),
    )


@dataclass(frozen=True)
class Comparison:
    """Gate figures of a candidate against the served version (None before the first release)."""

    day: HeldOutDay
    metric: str
    tolerance: float
    candidate: dict[str, Any]
    served: dict[str, Any] | None
    difference: dict[str, float | None] | None

    @property
    def accepted(self) -> bool:
        if self.served is None:
            return True
        return self.candidate["metrics"][self.metric]["value"] - self.served["metrics"][self.metric]["value"] >= -self.tolerance

    def render(self) -> str:
        """Return the figures as a table for the terminal."""
        lines = [f"held-out day {self.day.label}: {len(self.day)} candidates with content, {len(set(self.day.user_ids.tolist()))} users"]
        header = f"  {'version':<28}" + "".join(f"{name:>10}" for name in GATE_METRICS)
        lines.append(header)
        for figures in (self.served, self.candidate):
            if figures is None:
                continue
            name = f"{figures['label']} {figures['model_version']}"
            lines.append(f"  {name:<28}" + "".join(f"{figures['metrics'][m]['value']:>10.4f}" for m in GATE_METRICS))
        if self.difference is not None:
            d = self.difference
            lines.append(
                f"  {self.metric} candidate - served: {d['value']:+.4f} (95% paired bootstrap interval {d['low']:+.4f} .. {d['high']:+.4f}); "
                f"tolerance {self.tolerance:.4f}"
            )
        else:
            lines.append("  no version is served yet; nothing to compare against")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "day": self.day.label,
            "rows": len(self.day),
            "metric": self.metric,
            "tolerance": self.tolerance,
            "accepted": self.accepted,
            "candidate": self.candidate,
            "served": self.served,
            "difference": self.difference,
        }


def compare_versions(
    day: HeldOutDay,
    candidate: VersionScores,
    served: VersionScores | None,
    *,
    metric: str = "map@50",
    tolerance: float = 0.01,
    resamples: int = 500,
) -> Comparison:
    """Compute the gate figures of ``candidate`` and ``served`` on ``day``."""
    from model.bootstrap import UserBootstrap
    from model.evaluate_metrics import TestLayout, score_metrics

    if metric not in GATE_METRICS:
        raise ValueError(f"unknown gate metric {metric!r}; choose from {', '.join(GATE_METRICS)}")
    if tolerance < 0:
        raise ValueError(f"tolerance must not be negative, got {tolerance}")
    layout = TestLayout.build(user_ids=day.user_ids, impression_ids=day.impression_ids, labels=day.labels)
    bootstrap = UserBootstrap(layout.users, resamples=resamples, seed=0)

    def figures(version: VersionScores) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        measured = score_metrics(layout, version.scores, ks=(10, 25, 50), bootstrap=bootstrap)
        return (
            {
                "label": version.label,
                "model_version": version.model_version,
                "profile_version": version.profile_version,
                "cold_start_rows": version.cold_start_rows,
                "unknown_glance_rows": version.unknown_glance_rows,
                "metrics": {name: measured.intervals[name].to_json() for name in GATE_METRICS},
            },
            measured.per_user,
        )

    candidate_figures, candidate_users = figures(candidate)
    if served is None:
        return Comparison(day=day, metric=metric, tolerance=tolerance, candidate=candidate_figures, served=None, difference=None)
    served_figures, served_users = figures(served)
    if metric == "auc":
        value = candidate_figures["metrics"]["auc"]["value"] - served_figures["metrics"]["auc"]["value"]
        difference = {"value": value, "low": value, "high": value}
    else:
        paired = bootstrap.difference(candidate_users[metric], served_users[metric]).to_json()
        difference = {"value": paired["value"], "low": paired["low"], "high": paired["high"]}
    return Comparison(day=day, metric=metric, tolerance=tolerance, candidate=candidate_figures, served=served_figures, difference=difference)

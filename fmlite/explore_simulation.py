"""Exploration on the simulator: do fresh glances reach users, and what does it cost in MAP@50?

``python -m fmlite.explore_simulation --out var/explore-sim`` runs the experiment:

1. simulate a MIND-format dataset with known click probabilities (``model.simulate``);
2. train FM-Lite on it with the offline pipeline (history, training days, one held-out day);
3. replay the held-out day's logged rows in time order. Each row's candidates are scored by the
   model; L0's exploration code (``controller.explore``) runs on the scores, seeded by the row's
   impression id; the first ``slate_size`` glances by served score are the row's slate.
   Glance statistics start from the log before the held-out day and are refreshed every hour
   from the slates served so far (impressions) and the logged peeks of their glances, as an
   hourly statistics job beside L0 would publish them;
4. report, per policy: the share of fresh glances (first logged on the held-out day) that were in
   a slate within 1, 3 and 6 hours of their first logged appearance, slate impressions of fresh
   glances, peeks in slates (logged labels) and true expected peeks in slates (from the
   simulator's click probabilities), and MAP@50 of the served scores with the paired bootstrap
   difference against no exploration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from controller.explore import EpsilonGreedy, ExplorationPolicy, ThompsonSampling, apply_policy
from fmlite.glance_stats import GlanceStats

__all__ = ["ExperimentConfig", "run_experiment", "main"]

logger = logging.getLogger(__name__)

HOUR_MS = 3_600_000
WINDOWS_H = (1, 3, 6)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Size of the simulated dataset and the policies compared."""

    out: Path
    sample_dir: Path
    users: int = 4000
    seed: int = 11
    slate_size: int = 5
    epsilon: float = 0.1
    max_age_hours: float = 6.0
    prior_strength: float = 20.0
    text_cache_dir: Path | None = None


def _policies(config: ExperimentConfig) -> dict[str, ExplorationPolicy | None]:
    return {
        "none": None,
        f"epsilon_greedy (epsilon {config.epsilon}, age < {config.max_age_hours:g} h)": EpsilonGreedy(
            epsilon=config.epsilon, max_age_hours=config.max_age_hours, slate_size=config.slate_size
        ),
        f"thompson (prior strength {config.prior_strength:g})": ThompsonSampling(prior_strength=config.prior_strength, slate_size=config.slate_size),
    }


class _Counts:
    """Per-glance first-shown time, impressions and peeks, kept by integer glance code."""

    def __init__(self, names: np.ndarray):
        self.names = names
        self.first = np.full(len(names), np.iinfo(np.int64).max, dtype=np.int64)
        self.impressions = np.zeros(len(names), dtype=np.int64)
        self.peeks = np.zeros(len(names), dtype=np.int64)

    def add(self, codes: np.ndarray, times: np.ndarray, peeks: np.ndarray) -> None:
        np.minimum.at(self.first, codes, times)
        np.add.at(self.impressions, codes, 1)
        np.add.at(self.peeks, codes, peeks)

    def stats(self, as_of_ms: int, version: str) -> GlanceStats:
        shown = self.impressions > 0
        return GlanceStats(
            version=version,
            as_of_ms=as_of_ms,
            ids=self.names[shown],
            first_seen_ms=self.first[shown],
            impressions=self.impressions[shown],
            peeks=self.peeks[shown],
        )


def _replay(policy: ExplorationPolicy | None, rows: list[dict], names: np.ndarray, before: _Counts, slate_size: int) -> dict:
    counts = _Counts(names)
    counts.first[:] = before.first
    counts.impressions[:] = before.impressions
    counts.peeks[:] = before.peeks
    served_scores, slates = [], []
    stats, stats_hour = None, None
    for row in rows:
        hour = row["time_ms"] // HOUR_MS
        if stats is None or hour != stats_hour:
            stats = counts.stats(hour * HOUR_MS, version=f"hour-{hour}")
            stats_hour = hour
        scores = row["scores"]
        if policy is not None:
            scores = apply_policy(
                policy, scores=scores, glance_ids=names[row["codes"]].tolist(), stats=stats, now_ms=row["time_ms"], request_id=str(row["impression_id"]), salt="simulation"
            ).scores
        slate = np.argsort(-scores, kind="stable")[:slate_size]
        counts.add(row["codes"][slate], np.full(len(slate), row["time_ms"]), row["labels"][slate])
        served_scores.append(scores)
        slates.append(slate)
    return {"scores": served_scores, "slates": slates}


def _fresh_exposure(rows: list[dict], slates: list[np.ndarray], fresh_first: dict[int, int]) -> dict:
    first_slate: dict[int, int] = {}
    impressions_6h = {code: 0 for code in fresh_first}
    for row, slate in zip(rows, slates):
        for code in row["codes"][slate].tolist():
            if code in fresh_first:
                first_slate.setdefault(code, row["time_ms"])
                if row["time_ms"] - fresh_first[code] < 6 * HOUR_MS:
                    impressions_6h[code] += 1
    delays = np.array([(first_slate[c] - fresh_first[c]) / HOUR_MS if c in first_slate else np.inf for c in fresh_first])
    return {
        "fresh_glances": len(fresh_first),
        **{f"in_slate_within_{h}h": float(np.mean(delays <= h)) for h in WINDOWS_H},
        "never_in_slate": float(np.mean(~np.isfinite(delays))),
        "median_hours_to_slate": float(np.median(delays)) if len(delays) else float("nan"),
        "slate_impressions_first_6h_mean": float(np.mean(list(impressions_6h.values()))) if impressions_6h else 0.0,
    }


def run_experiment(config: ExperimentConfig) -> dict:
    """Simulate, train, replay the held-out day under each policy and return the figures."""
    from model.bootstrap import UserBootstrap
    from model.config import PipelineConfig
    from model.dataset import ExampleSet, held_out_impressions
    from model.evaluate_metrics import TestLayout, score_metrics
    from model.pipeline import run_pipeline
    from model.simulate import SimulationConfig, simulate
    from model.simulator_truth import TRUTH_FILE, HiddenPreferences
    from model.train import predict

    started = time.perf_counter()
    data_dir = config.out / "data"
    if not (data_dir / "behaviors.tsv").is_file():
        simulate(SimulationConfig(sample_dir=config.sample_dir, users=config.users, seed=config.seed), data_dir)
    pipeline = run_pipeline(
        PipelineConfig(data_dir=data_dir, out=config.out / "artifacts", seed=config.seed, text_cache_dir=config.text_cache_dir, progress=False)
    )
    artifacts = pipeline.artifacts
    from model.mind import read_mind

    source = read_mind(data_dir)
    windows = artifacts.windows
    test_start_ms = int(np.datetime64(windows.date_of(windows.test[0]), "ms").astype(np.int64))
    frame = source.interactions.frame
    times_ms = frame["timestamp"].to_numpy(dtype="datetime64[ms]").astype(np.int64)
    names, codes = np.unique(frame["glance_id"].to_numpy(dtype=object).astype(str), return_inverse=True)
    before = _Counts(names)
    earlier = times_ms < test_start_ms
    before.add(codes[earlier], times_ms[earlier], frame["peek"].to_numpy(dtype=np.int64)[earlier])
    first_logged = np.full(len(names), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_logged, codes, times_ms)
    fresh_first = {int(c): int(first_logged[c]) for c in np.flatnonzero(first_logged >= test_start_ms)}

    impressions = held_out_impressions(source, windows)
    code_of = {name: index for index, name in enumerate(names.tolist())}
    glance_index = {gid: row for row, gid in enumerate(artifacts.glances.ids.tolist())}
    truth, truth_users, truth_glances = HiddenPreferences.load(data_dir / TRUTH_FILE)
    truth_user = {u: i for i, u in enumerate(truth_users.tolist())}
    truth_glance = {g: i for i, g in enumerate(truth_glances.tolist())}
    rows = []
    for record in impressions.itertuples(index=False):
        glance_ids = np.asarray(record.glance_ids, dtype=object).astype(str)
        rows.append(
            {
                "impression_id": int(record.impression_id),
                "user_id": str(record.user_id),
                "time_ms": int(record.time.value // 1_000_000),
                "codes": np.array([code_of[g] for g in glance_ids.tolist()], dtype=np.int64),
                "glance_rows": np.array([glance_index.get(g, -1) for g in glance_ids.tolist()], dtype=np.int64),
                "labels": np.asarray(record.labels, dtype=np.int64),
                "truth": truth.probabilities(np.full(len(glance_ids), truth_user[str(record.user_id)]), np.array([truth_glance[g] for g in glance_ids.tolist()])),
            }
        )
    flat_users = np.concatenate([np.full(len(r["codes"]), r["user_id"], dtype=object) for r in rows]).astype(str)
    flat_glances = np.concatenate([r["glance_rows"] for r in rows])
    if np.any(flat_glances < 0):
        raise RuntimeError(f"{int((flat_glances < 0).sum())} held-out candidates have no glance profile; the simulator gives every glance content")
    examples = ExampleSet(
        user_ids=flat_users,
        glance_ids=names[np.concatenate([r["codes"] for r in rows])],
        user_rows=artifacts.serving_profiles.rows_of(flat_users).astype(np.int64),
        glance_rows=flat_glances,
        labels=np.concatenate([r["labels"] for r in rows]).astype(np.float32),
    )
    model_scores = predict(artifacts.train_result.model, examples, users=artifacts.serving_profiles, glances=artifacts.glances, batch_size=4096).astype(np.float64)
    offset = 0
    for row in rows:
        row["scores"] = model_scores[offset : offset + len(row["codes"])]
        offset += len(row["codes"])

    layout = TestLayout.build(
        user_ids=flat_users, impression_ids=np.concatenate([np.full(len(r["codes"]), r["impression_id"]) for r in rows]), labels=examples.labels
    )
    bootstrap = UserBootstrap(layout.users, resamples=500, seed=0)
    results: dict[str, dict] = {}
    baseline_users = None
    for name, policy in _policies(config).items():
        replay = _replay(policy, rows, names, before, config.slate_size)
        measured = score_metrics(layout, np.concatenate(replay["scores"]), ks=(50,), bootstrap=bootstrap)
        entry = {
            "map@50": measured.intervals["map@50"].to_json(),
            "slate_peeks_per_1000_slates": 1000.0 * float(np.mean([r["labels"][s].sum() for r, s in zip(rows, replay["slates"])])),
            "slate_true_peeks_per_1000_slates": 1000.0 * float(np.mean([r["truth"][s].sum() for r, s in zip(rows, replay["slates"])])),
            **_fresh_exposure(rows, replay["slates"], fresh_first),
        }
        if baseline_users is None:
            baseline_users = measured.per_user["map@50"]
        else:
            entry["map@50_minus_none"] = bootstrap.difference(measured.per_user["map@50"], baseline_users).to_json()
        results[name] = entry
    return {
        "config": {key: str(value) if isinstance(value, Path) else value for key, value in dataclasses.asdict(config).items()},
        "held_out_day": windows.to_json()["test"],
        "rows": len(rows),
        "candidates": len(examples),
        "users": int(layout.users),
        "validation_auc": pipeline.metrics["val_auc"],
        "policies": results,
        "seconds": round(time.perf_counter() - started, 1),
    }


def render(figures: dict) -> str:
    """Return the figures as a Markdown table."""
    lines = [
        f"Held-out day {figures['held_out_day']['first']}: {figures['rows']} logged rows, {figures['candidates']} candidates, "
        f"{figures['users']} users; FM-Lite validation AUC {figures['validation_auc']:.3f}; slate = top {figures['config']['slate_size']}.",
        "",
        "| policy | fresh glances in a slate within 1 h / 3 h / 6 h | never | slate impressions per fresh glance, first 6 h | MAP@50 | MAP@50 vs none (95% interval) | logged peeks per 1,000 slates | true expected peeks per 1,000 slates |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in figures["policies"].items():
        difference = entry.get("map@50_minus_none")
        versus = f"{difference['value']:+.4f} ({difference['low']:+.4f} .. {difference['high']:+.4f})" if difference else "-"
        lines.append(
            f"| {name} | {entry['in_slate_within_1h']:.1%} / {entry['in_slate_within_3h']:.1%} / {entry['in_slate_within_6h']:.1%} "
            f"| {entry['never_in_slate']:.1%} | {entry['slate_impressions_first_6h_mean']:.1f} | {entry['map@50']['value']:.4f} | {versus} "
            f"| {entry['slate_peeks_per_1000_slates']:.0f} | {entry['slate_true_peeks_per_1000_slates']:.0f} |"
        )
    lines.append("")
    lines.append(f"{next(iter(figures['policies'].values()))['fresh_glances']} fresh glances (first logged on the held-out day); run took {figures['seconds']:.0f} s.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from model.config import DEFAULT_DATA_DIR

    parser = argparse.ArgumentParser(prog="python -m fmlite.explore_simulation", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="var/explore-sim", help="working directory: simulated data, artifacts, figures (default %(default)s)")
    parser.add_argument("--sample", default=str(DEFAULT_DATA_DIR), help="real MIND sample that the simulator calibrates to (default %(default)s)")
    parser.add_argument("--users", type=int, default=4000, help="simulated users (default %(default)s)")
    parser.add_argument("--seed", type=int, default=11, help="seed of the simulation and the training (default %(default)s)")
    parser.add_argument("--slate-size", type=int, default=5, help="glances of a row that a user sees (default %(default)s)")
    parser.add_argument("--epsilon", type=float, default=0.1, help="share of rows where epsilon-greedy promotes (default %(default)s)")
    parser.add_argument("--max-age-hours", type=float, default=6.0, help="age below which epsilon-greedy promotes a glance (default %(default)s)")
    parser.add_argument("--prior-strength", type=float, default=20.0, help="pseudo-impressions of the Thompson prior (default %(default)s)")
    parser.add_argument("--text-cache", default="var/cache", help="text-embedding cache directory (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = ExperimentConfig(
        out=Path(args.out), sample_dir=Path(args.sample), users=args.users, seed=args.seed, slate_size=args.slate_size,
        epsilon=args.epsilon, max_age_hours=args.max_age_hours, prior_strength=args.prior_strength, text_cache_dir=Path(args.text_cache),
    )
    config.out.mkdir(parents=True, exist_ok=True)
    figures = run_experiment(config)
    (config.out / "figures.json").write_text(json.dumps(figures, indent=1))
    print(render(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

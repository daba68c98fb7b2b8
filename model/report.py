"""Write an evaluation as Markdown tables, a JSON file with the same figures, and PNG plots.

JSON layout: ``{"datasets": [...facts per dataset...], "records": [...], "differences": [...]}``.
There is one record per model (or ablation) and dataset, and each record gives every metric as
``{value, low, high, count}``: the value, its 95% bootstrap interval over users, and the number
of users the metric is defined for. ``differences`` are paired FM-Lite-minus-model intervals
computed on the same resamples.
Plots: ``metrics-<dataset>.png`` (MAP@k and MPRR@k per model with intervals) and
``peek-rates-<dataset>.png`` (users' peek rates before and after the beta-interval factor).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from model.baselines import FMLITE_NAMES
from model.evaluate import EvaluationResult, ModelRecord

__all__ = ["render_markdown", "render_method", "render_notes", "render_summary", "result_json", "write_report", "write_plots", "merge_json"]

logger = logging.getLogger(__name__)

_LABELS = {"auc": "AUC", "mrr": "MRR", "ndcg@10": "nDCG@10"}


def _metric_label(name: str) -> str:
    if name in _LABELS:
        return _LABELS[name]
    kind, _, k = name.partition("@")
    return f"{kind.upper()}@{k}"


def _cell(record: ModelRecord, metric: str) -> str:
    interval = record.metrics.get(metric)
    if interval is None or not math.isfinite(interval.value):
        return "n/a"
    return f"{interval.value:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def _parameters(record: ModelRecord) -> str:
    return f"{record.parameters:,}" if record.parameters is not None else "-"


def _table(records: list[ModelRecord], metrics: list[str], *, with_parameters: bool) -> list[str]:
    header = ["model"] + ([ "parameters"] if with_parameters else []) + [_metric_label(metric) for metric in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for record in records:
        cells = [record.label] + ([_parameters(record)] if with_parameters else []) + [_cell(record, metric) for metric in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _difference_lines(result: EvaluationResult) -> list[str]:
    lines = ["| model | minus | metric | difference [95% interval] | relative | separate intervals overlap |", "|---|---|---|---:|---:|---|"]
    names = {record.key: record.label for record in result.records}
    for row in result.differences:
        interval = row["difference"]
        relative = f"{row['relative']:+.1%}" if row["relative"] is not None else "n/a"
        lines.append(
            f"| {names.get(row['model'], row['model'])} | {names.get(row['versus'], row['versus'])} | {_metric_label(row['metric'])} | "
            f"{interval['value']:+.4f} [{interval['low']:+.4f}, {interval['high']:+.4f}] | {relative} | "
            f"{'yes' if row['intervals_overlap'] else 'no'} |"
        )
    return lines


def _tuning_lines(result: EvaluationResult) -> list[str]:
    lines = ["| model | learning rate | epochs run | best epoch | validation log loss | validation AUC | seconds |", "|---|---:|---:|---:|---:|---:|---:|"]
    for record in result.records:
        for trial in record.tuning:
            chosen = " (chosen)" if trial["learning_rate"] == record.chosen_learning_rate and len(record.tuning) > 1 else ""
            lines.append(
                f"| {record.label} | {trial['learning_rate']:g}{chosen} | {trial['epochs_run']} | {trial['best_epoch']} | "
                f"{trial['val_log_loss']:.4f} | {trial['val_auc']:.4f} | {trial['seconds']:.0f} |"
            )
    return lines


def render_method(ks: tuple[int, ...]) -> str:
    """Return the section that defines the models, metrics and intervals of every table."""
    cutoffs = ", ".join(str(k) for k in ks)
    return "\n".join(
        [
            "## Method",
            "",
            "All models read the same six inputs (user and glance meta, image and text sections), are trained on the "
            "same training set and scored on the same held-out day:",
            "",
            "- Baseline: cosine similarity of the concatenated user and glance features, no training.",
            "- Linear: logistic regression on the concatenated features.",
            "- Dense: an MLP (256 and 128 ReLU units) on the concatenated features and their inner product.",
            "- Wide & Deep: a linear wide part over the concatenated features and the meta cross features "
            "(user peek rate times glance one-hot, element-wise), plus a deep MLP (256 and 128 ReLU units).",
            "- FM-Lite: per-section user and glance towers (image and text: 64 ReLU units, then 16; meta: one linear "
            "layer of input width, see the notes), s_IF and s_TF inner products, s_MF = [a_u, a_g, <a_u, a_g>], "
            "one logistic unit over their concatenation (the exported serving architecture).",
            "- Oracle (simulated data only): the true click probability of the simulator, the ceiling of every metric.",
            "",
            f"Metrics, for k = {cutoffs}: MAP@k and MPRR@k per user over the user's candidates of the day pooled and ranked "
            "by score. AP@k = sum_i P(i) rel(i) / min(m, k) with m the user's peeks; PRR@k = (peek rate of the top k) / "
            "(the user's peek rate over all candidates). Both are averaged over users with at least one peek. AUC, MRR and "
            "nDCG@10 are computed per impression and averaged over impressions, as published MIND figures are "
            "(MRR: mean of 1/rank over the impression's peeks; nDCG@10 with gains 2^rel - 1 and log2(rank + 1) discounts).",
            "",
            "Intervals: 95% percentile bootstrap over users (impressions of a user resampled together), the same resamples "
            "for every model, so FM-Lite's paired differences come from the same draws. Separate intervals that do not "
            "overlap are a stricter test than a paired interval that excludes 0.",
            "",
        ]
    )


def render_notes() -> str:
    """Return the section that explains two design choices of FM-Lite's inputs and layers."""
    return "\n".join(
        [
            "## Notes on the FM-Lite rows",
            "",
            "- FM-Lite's meta towers are one linear layer as wide as the M meta columns (about 190 on MIND data), "
            "initialised to the identity, so <a_u_MF, a_g_MF> starts as the sum of the user's meta values for the "
            "glance's own category, subcategory and format, sum_j u_MF[j] g_MF[j], and training learns a full bilinear "
            "form from there. That diagonal form has rank M; meta towers that end in 16 dimensions (the row \"FM-Lite "
            "with rank-16 meta towers\") cannot represent it.",
            "- The meta section holds log lifts, not the paper's plain peek rates: per value j, log(r_uj / r_j), with the "
            "user's rate r_uj shrunk toward the population's rate r_j by 10 pseudo-impressions, then scaled by the "
            "beta-interval factor. A value the user was never shown reads 0 (peeks like everyone) instead of a rate of 0 "
            "(never peeks). The inner product with a glance's one-hot meta adds up lifts, which is close to adding "
            "log-odds at peek rates of a few percent. The row \"plain meta peek rates\" shows the paper's form.",
            "- Undated history clicks are dated to the day before each profile window, so the training and the serving "
            "profiles see them at the same age. With one fixed date, the serving window, two days later, decayed them "
            "more than the training window had, and models were served profiles with a different mix of evidence.",
            "- Clicks of MIND's history column come without their impressions. The user encoder counts each one in the "
            "meta peek rates as 1/p impressions with the population's mix of meta values, where p is the peek rate of the "
            "window's logged impressions. In the beta-interval factor it counts as one peek and 1/p - 1 non-peeks. Counted "
            "as one impression, a history click would read as an impression that was always peeked. The row \"history "
            "clicks left out of the meta peek rates\" shows the effect. Every model reads the same profiles.",
            "",
        ]
    )


def render_summary(result: EvaluationResult, *, metric: str = "map@50") -> list[str]:
    """Return lines stating how each FM-Lite row compares with every other model on ``metric``."""
    lines = []
    for fmlite in [record for record in result.records if record.key in FMLITE_NAMES and metric in record.metrics]:
        lines += _summary_of(result, fmlite, metric)
    return lines


def _summary_of(result: EvaluationResult, fmlite: ModelRecord, metric: str) -> list[str]:
    lines = []
    for key in ("baseline", "wide_deep", "dense", "linear"):
        row = next((row for row in result.differences if row["model"] == fmlite.key and row["versus"] == key and row["metric"] == metric), None)
        other = result.record(key)
        if row is None or other is None:
            continue
        interval = row["difference"]
        verdict = "do not overlap" if not row["intervals_overlap"] else "overlap"
        lines.append(
            f"- {fmlite.label} {_metric_label(metric)} {fmlite.metrics[metric].value:.4f} against {other.label} "
            f"{other.metrics[metric].value:.4f}: {interval['value']:+.4f} ({row['relative']:+.1%}), paired 95% interval "
            f"[{interval['low']:+.4f}, {interval['high']:+.4f}]; the two models' separate 95% intervals {verdict}."
        )
    return lines


def render_markdown(result: EvaluationResult, *, plots: dict[str, str] | None = None) -> str:
    """Return the Markdown section of one dataset's evaluation."""
    facts = result.facts
    test = facts["test_day"]
    training = facts["training_set"]
    fit = facts["fit"]
    per_user = [name for name in result.metric_names if name.startswith(("map@", "mprr@"))]
    per_impression = [name for name in result.metric_names if name not in per_user]
    comparison = [record for record in result.records if record.group == "comparison"]
    reference = [record for record in result.records if record.group == "reference"]
    ablations = [record for record in result.records if record.group == "ablation"]
    fmlite = result.record("fmlite")

    lines = [
        f"## Dataset `{result.dataset}`",
        "",
        f"Data: `{result.data_dir}`. Windows: history {facts['windows']['history']['first']} to {facts['windows']['history']['last']} "
        f"(plus the history column), training {facts['windows']['train']['first']} to {facts['windows']['train']['last']}, "
        f"held-out test day {facts['windows']['test']['first']}; test-day profiles cover {facts['windows']['serving_history']['first']} "
        f"to {facts['windows']['serving_history']['last']}.",
        "",
        f"Training set (negatives 2:1): {training['train']['examples']:,} examples ({training['train']['positives']:,} positive) from the "
        f"80% training users, {training['validation']['examples']:,} validation examples from the other 20%. Test day: "
        f"{test['candidates_with_content']:,} candidates with content ({test['peeks_with_content']:,} peeked) in "
        f"{test['impressions_with_content']:,} impressions of {test['users']:,} users ({test['users_with_a_peek']:,} with a peek, "
        f"{test['cold_start_users']:,} without a profile); {test['candidates_logged']:,} candidates were logged that day.",
        "",
        f"Intervals: 95% percentile bootstrap over users, {facts['bootstrap']['resamples']} resamples, impressions of a user kept together.",
        "",
        *(_simulation_line(result)),
        *(["### Summary", "", *render_summary(result), ""] if result.differences else []),
        "### Models",
        "",
        *_table(comparison + reference, per_user, with_parameters=True),
        "",
        "MIND-style figures (mean over impressions; AUC over impressions with a peek and a non-peek):",
        "",
        *_table(comparison + reference, per_impression, with_parameters=False),
        "",
    ]
    if result.differences:
        lines += ["### FM-Lite against each model (paired bootstrap, same resamples)", "", *_difference_lines(result), ""]
    if ablations and fmlite is not None:
        lines += [
            "### Ablations of FM-Lite",
            "",
            "Each row retrains FM-Lite with one change; the first row is the main FM-Lite row "
            "(normalisation and decay on, negatives 2:1).",
            "",
            *_table([fmlite, *ablations], per_user + ["auc"], with_parameters=False),
            "",
        ]
    lines += [
        "### Tuning",
        "",
        f"Every trainable model: Adam, binary cross-entropy, batch {fit['batch_size']}, at most {fit['epochs']} epochs with early stopping "
        f"on validation log loss (patience {fit['patience']}, best epoch restored), one run per learning rate in "
        f"{', '.join(f'{rate:g}' for rate in fit['learning_rates'])}, the lowest validation log loss kept. Ablations reuse "
        "FM-Lite's chosen learning rate. The cosine baseline and the oracle have nothing to tune.",
        "",
        *_tuning_lines(result),
        "",
    ]
    if result.calibration:
        lines += ["### Simulator calibration", "", "| figure | real sample | simulated |", "|---|---|---|"]
        lines += [f"| {row['figure']} | {row['sample']} | {row['simulated']} |" for row in result.calibration]
        lines.append("")
    if plots:
        lines += ["### Plots", ""] + [f"![{title}]({path})" for title, path in plots.items()] + [""]
    lines.append(f"Evaluation time: {result.seconds / 60:.1f} minutes.")
    return "\n".join(lines)


def _simulation_line(result: EvaluationResult) -> list[str]:
    config = result.facts.get("simulation")
    if not config:
        return []
    return [
        f"Simulated dataset, written by `fmlite simulate --out {result.data_dir} --users {config['users']} --days {config['days']} "
        f"--seed {config['seed']}` ({config.get('sessions_per_user_day')} sessions per user and day before the click filter).",
        "",
    ]


def result_json(result: EvaluationResult) -> dict[str, Any]:
    """Return the JSON document of one dataset's evaluation."""
    return {
        "datasets": [{"dataset": result.dataset, "data_dir": result.data_dir, "seconds": round(result.seconds, 1), **result.facts, "calibration": result.calibration}],
        "records": [record.to_json() for record in result.records],
        "differences": [{"dataset": result.dataset, **row} for row in result.differences],
    }


def merge_json(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate the JSON documents of several datasets into one."""
    merged: dict[str, Any] = {"datasets": [], "records": [], "differences": []}
    for document in documents:
        for key in merged:
            merged[key].extend(document.get(key, []))
    return merged


def _colour(record: ModelRecord) -> str:
    if record.key in FMLITE_NAMES:
        return "tab:red"
    if record.group == "reference":
        return "tab:grey"
    return "tab:blue"


def write_plots(result: EvaluationResult, directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Draw the metric and peek-rate plots of ``result`` into ``directory``; return title -> path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    records = [record for record in result.records if record.group in ("comparison", "reference")]
    metrics = [name for name in result.metric_names if name.startswith(("map@", "mprr@"))]
    figure, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 3.6), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        values = np.array([record.metrics[metric].value for record in records])
        low = values - np.array([record.metrics[metric].low for record in records])
        high = np.array([record.metrics[metric].high for record in records]) - values
        positions = np.arange(len(records))
        colours = [_colour(record) for record in records]
        axis.bar(positions, values, yerr=np.vstack([low, high]), color=colours, capsize=3)
        axis.set_xticks(positions, [record.label.replace(" (", "\n(") for record in records], rotation=60, ha="right", fontsize=7)
        axis.set_title(_metric_label(metric), fontsize=9)
        finite = values[np.isfinite(values)]
        if len(finite):
            axis.set_ylim(max(0.0, finite.min() * 0.8), finite.max() * 1.08)
    figure.suptitle(f"{result.dataset}: metric by model, 95% bootstrap intervals over users", fontsize=10)
    figure.tight_layout()
    metrics_path = directory / f"metrics-{result.dataset}.png"
    figure.savefig(metrics_path, dpi=110)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(0.0, 1.0, 41)
    axis.hist(result.peek_rates["before"], bins=bins, alpha=0.6, label="peek rate a / (a + b)")
    axis.hist(result.peek_rates["after"], bins=bins, alpha=0.6, label="after the beta-interval factor n")
    axis.set_xlabel("user peek rate over the history window")
    axis.set_ylabel("users")
    axis.set_yscale("log")
    axis.legend(fontsize=8)
    axis.set_title(f"{result.dataset}: user peek rates before and after normalisation", fontsize=10)
    figure.tight_layout()
    rates_path = directory / f"peek-rates-{result.dataset}.png"
    figure.savefig(rates_path, dpi=110)
    plt.close(figure)
    return {"metric by model": metrics_path, "peek rates before and after normalisation": rates_path}


def write_report(
    results: list[EvaluationResult],
    *,
    report: str | os.PathLike[str],
    plots_dir: str | os.PathLike[str] | None = None,
    preamble: str = "",
) -> tuple[Path, Path]:
    """Write the Markdown report and the JSON beside it (same name, ``.json``); return both paths."""
    report = Path(report)
    report.parent.mkdir(parents=True, exist_ok=True)
    sections = [preamble.rstrip()] if preamble else []
    if results:
        sections.append(render_method(results[0].ks).rstrip())
        sections.append(render_notes().rstrip())
    documents = []
    for result in results:
        plots: dict[str, str] = {}
        if plots_dir is not None:
            written = write_plots(result, plots_dir)
            plots = {title: os.path.relpath(path, report.parent) for title, path in written.items()}
        sections.append(render_markdown(result, plots=plots))
        documents.append(result_json(result))
    report.write_text("\n\n".join(sections) + "\n")
    json_path = report.with_suffix(".json")
    json_path.write_text(json.dumps(_finite(merge_json(documents)), indent=1, allow_nan=False) + "\n")
    logger.info("wrote %s and %s", report, json_path)
    return report, json_path


def _finite(value: Any) -> Any:
    """Return ``value`` with NumPy scalars made Python values and NaN or infinity made None."""
    if isinstance(value, dict):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value

"""``fmlite evaluate`` end to end on a small simulated dataset: report, JSON, plots, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from model.baselines import MODEL_NAMES
from model.cli_quality import main_evaluate

METRICS = ["map@10", "map@25", "map@50", "mprr@10", "mprr@25", "mprr@50", "auc", "mrr", "ndcg@10"]


@pytest.fixture(scope="module")
def evaluation(small_simulation, quality_text_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    report = out / "evaluation.md"
    code = main_evaluate(
        [
            "--data", str(small_simulation.out),
            "--report", str(report),
            "--plots", str(out / "plots"),
            "--cache-dir", str(quality_text_cache),
            "--epochs", "2",
            "--learning-rates", "0.003",
            "--resamples", "50",
            "--ablations", "no_normalisation,negatives_1",
            "--log-level", "WARNING",
        ]
    )
    return code, report, json.loads(report.with_suffix(".json").read_text()), out


def test_exit_code_and_files(evaluation):
    code, report, _, out = evaluation
    assert code == 0
    assert report.is_file()
    assert report.with_suffix(".json").is_file()
    plots = sorted(path.name for path in (out / "plots").iterdir())
    assert plots == [f"metrics-{Path(_dataset(evaluation)).name}.png", f"peek-rates-{Path(_dataset(evaluation)).name}.png"]


def _dataset(evaluation) -> str:
    return evaluation[2]["datasets"][0]["dataset"]


def test_every_model_and_ablation_has_a_record(evaluation):
    records = evaluation[2]["records"]
    keys = [record["model"] for record in records]
    assert keys[: len(MODEL_NAMES)] == list(MODEL_NAMES)
    assert [key for key in keys if key.startswith("fmlite:")] == ["fmlite:no_normalisation", "fmlite:negatives_1"]
    assert keys[-2:] == ["baseline_plain_rates", "oracle"]
    groups = {record["model"]: record["group"] for record in records}
    assert groups["baseline_plain_rates"] == "reference"


def test_every_metric_has_an_interval(evaluation):
    for record in evaluation[2]["records"]:
        assert sorted(record["metrics"]) == sorted(METRICS), record["model"]
        for name, interval in record["metrics"].items():
            assert interval["value"] is not None, (record["model"], name)
            assert interval["low"] <= interval["value"] + 1e-9, (record["model"], name)
            assert interval["value"] <= interval["high"] + 1e-9, (record["model"], name)


def test_parameter_counts(evaluation):
    records = {record["model"]: record for record in evaluation[2]["records"]}
    assert records["baseline"]["parameters"] is None
    assert records["oracle"]["parameters"] is None
    for name in ("linear", "dense", "wide_deep", "fmlite"):
        assert records[name]["parameters"] > 0, name
    assert records["linear"]["parameters"] < records["fmlite"]["parameters"] < records["wide_deep"]["parameters"]


def test_same_tuning_for_every_trainable_model(evaluation):
    records = {record["model"]: record for record in evaluation[2]["records"]}
    for name in ("linear", "dense", "wide_deep", "fmlite"):
        assert [trial["learning_rate"] for trial in records[name]["tuning"]] == [0.003], name
        assert records[name]["chosen_learning_rate"] == 0.003


def test_paired_differences_reported(evaluation):
    differences = evaluation[2]["differences"]
    versus = {row["versus"] for row in differences if row["metric"] == "map@50"}
    assert versus == {"baseline", "linear", "dense", "wide_deep"}
    for row in differences:
        assert row["difference"]["low"] <= row["difference"]["high"]


def test_markdown_tables(evaluation):
    text = evaluation[1].read_text()
    assert text.startswith("# FM-Lite offline evaluation")
    assert "Command: `fmlite evaluate --data" in text
    for heading in ("### Models", "### Ablations of FM-Lite", "### Tuning", "### Simulator calibration", "### Plots"):
        assert heading in text, heading
    assert "| Wide & Deep |" in text
    for label in ("MAP@50", "MPRR@25", "nDCG@10"):
        assert label in text, label


def test_oracle_ranks_better_than_chance(evaluation):
    records = {record["model"]: record for record in evaluation[2]["records"]}
    assert records["oracle"]["metrics"]["auc"]["value"] > 0.6


def test_dataset_facts(evaluation):
    facts = evaluation[2]["datasets"][0]
    assert facts["test_day"]["users"] > 0
    assert facts["training_set"]["train"]["positives"] > 0
    assert facts["calibration"][0]["figure"] == "users"
    assert not math.isnan(facts["seconds"])


def test_missing_data_directory_rejected(tmp_path):
    from model.evaluate_data import DataError

    with pytest.raises(DataError, match="contains neither"):
        main_evaluate(["--data", str(tmp_path), "--report", str(tmp_path / "r.md")])


def test_unknown_ablation_rejected(small_simulation, tmp_path):
    with pytest.raises(ValueError, match="unknown ablations"):
        main_evaluate(["--data", str(small_simulation.out), "--report", str(tmp_path / "r.md"), "--ablations", "no_dropout"])


def test_unknown_model_rejected(small_simulation, tmp_path):
    with pytest.raises(ValueError, match="unknown models"):
        main_evaluate(["--data", str(small_simulation.out), "--report", str(tmp_path / "r.md"), "--models", "baseline,xgboost"])


def test_bad_learning_rates_rejected(small_simulation, tmp_path):
    with pytest.raises(SystemExit):
        main_evaluate(["--data", str(small_simulation.out), "--report", str(tmp_path / "r.md"), "--learning-rates", "fast"])


def test_ablation_names_match_definitions():
    from model.evaluate import ABLATIONS
    from model.quality_names import ABLATION_NAMES

    assert tuple(ABLATIONS) == ABLATION_NAMES


def test_parser_loads_no_tensorflow():
    import subprocess
    import sys

    code = (
        "import argparse, sys\n"
        "from model.cli_quality import add_quality_parsers\n"
        "parser = argparse.ArgumentParser()\n"
        "add_quality_parsers(parser.add_subparsers())\n"
        "print([name for name in ('tensorflow', 'keras', 'torch', 'pandas') if name in sys.modules])\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert output == "[]"


def test_every_encoder_switch_gets_its_own_profiles(small_simulation, quality_text_cache):
    # The ablations of the user encoder must each read profiles built with their own switch.
    from model.config import UserEncoderConfig, WindowConfig
    from model.evaluate_data import prepare_data

    data = prepare_data(small_simulation.out, windows=WindowConfig(), cache_dir=quality_text_cache, text_model_path=None, seed=0)
    variants = [UserEncoderConfig(), UserEncoderConfig(impute_history=False), UserEncoderConfig(normalize=False), UserEncoderConfig(decay=False)]
    metas = [data.profile_pair(encoder).training.meta for encoder in variants]
    for index, meta in enumerate(metas[1:], start=1):
        assert not np_equal(metas[0], meta), variants[index]
    assert data.profile_pair(UserEncoderConfig()) is data.profile_pair(UserEncoderConfig())
    assert data.training_set(UserEncoderConfig(), 2.0) is not data.training_set(UserEncoderConfig(impute_history=False), 2.0)


def np_equal(left, right) -> bool:
    return left.shape == right.shape and bool((left == right).all())

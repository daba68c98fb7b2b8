"""One pipeline run on the real sample: outputs, report, SavedModel reload, snapshot round trip."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fmlite.sharding import shard_of
from fmlite.signature import INPUT_NAMES, OUTPUT_NAME, SIGNATURE_NAME
from fmlite.snapshot import current_version, load_glances, load_users, read_manifest
from model.dataset import feature_arrays
from model.export import METADATA_FILE, ExportError, export_savedmodel
from model.train import predict

# Every test here reads the session's pipeline run (encoding and training on the real sample).
pytestmark = pytest.mark.slow


def test_output_layout(pipeline_run):
    config, result = pipeline_run
    assert result.model_version == result.snapshot_version
    assert result.model_dir == config.out / "models" / "fmlite" / str(result.model_version)
    assert (result.model_dir / "saved_model.pb").is_file()
    assert (result.model_dir / "variables" / "variables.index").is_file()
    assert (result.model_dir / METADATA_FILE).is_file()
    assert result.snapshot_dir == config.out / "profiles" / str(result.snapshot_version)
    assert current_version(config.out / "profiles") == result.snapshot_version
    assert result.report_path == config.out / "reports" / f"train-{result.model_version}.json"
    # Only complete versions are visible: no staging directories are left behind.
    assert [path.name for path in (config.out / "models" / "fmlite").iterdir()] == [str(result.model_version)]
    assert sorted(path.name for path in (config.out / "profiles").iterdir()) == sorted(["CURRENT", str(result.snapshot_version)])


def test_outputs_follow_umask(pipeline_run):
    # Servers may run as another user, so published outputs get the umask's modes, not 0700/0600.
    config, result = pipeline_run
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(result.model_dir.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE(result.snapshot_dir.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((config.out / "profiles" / "CURRENT").stat().st_mode) == 0o666 & ~umask


def test_report_contents(pipeline_run):
    _, result = pipeline_run
    report = json.loads(result.report_path.read_text())
    metrics = report["metrics"]
    assert math.isfinite(metrics["val_log_loss"])
    assert metrics["val_log_loss"] > 0
    assert 0.0 <= metrics["val_auc"] <= 1.0
    assert metrics["val_log_loss"] == pytest.approx(result.metrics["val_log_loss"])
    assert metrics["parameter_count"] == result.artifacts.train_result.model.count_params()
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"] <= 3
    assert len(report["epochs"]) == metrics["epochs_run"]
    assert {"loss", "val_loss", "auc", "val_auc"} <= set(report["epochs"][0])
    assert report["windows"]["test"] == {"first": "2019-11-14", "last": "2019-11-14"}
    counts = report["counts"]
    assert counts["interactions"] == 189_359
    assert counts["users_in_log"] == 4_637
    assert counts["train"]["negatives"] == 2 * counts["train"]["positives"]
    assert counts["validation"]["examples"] > 0
    assert set(report["timings_seconds"]) == {"read", "encode_glances", "user_profiles", "training_set", "train", "export", "snapshot"}
    assert 0.0 < report["fallback_score"] < 1.0


def test_savedmodel_reload_without_project_code(pipeline_run, tmp_path):
    _, result = pipeline_run
    artifacts = result.artifacts
    examples = artifacts.training_set.train
    inputs = feature_arrays(examples, users=artifacts.training_profiles, glances=artifacts.glances)
    expected = predict(artifacts.train_result.model, examples, users=artifacts.training_profiles, glances=artifacts.glances)
    np.savez(tmp_path / "inputs.npz", **inputs)

    script = textwrap.dedent(
        f"""
        import json
        import sys
        import numpy as np
        import tensorflow as tf
        loaded = tf.saved_model.load({str(result.model_dir)!r})
        serve = loaded.signatures[{SIGNATURE_NAME!r}]
        with np.load({str(tmp_path / "inputs.npz")!r}) as archive:
            tensors = {{name: tf.constant(archive[name]) for name in archive.files}}
        scores = serve(**tensors)[{OUTPUT_NAME!r}].numpy()
        assert not any(name == "model" or name.startswith("model.") for name in sys.modules), "project code was imported"
        spec = serve.structured_input_signature[1]
        print(json.dumps({{"inputs": {{name: [spec[name].shape.as_list(), spec[name].dtype.name] for name in spec}},
                          "output": serve.structured_outputs[{OUTPUT_NAME!r}].shape.as_list()}}))
        np.save({str(tmp_path / "scores.npy")!r}, scores)
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    scores = np.load(tmp_path / "scores.npy")
    assert scores.shape == (len(examples),)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected, atol=1e-5)

    described = json.loads(completed.stdout.strip().splitlines()[-1])
    assert sorted(described["inputs"]) == sorted(INPUT_NAMES)
    meta_dim = artifacts.glances.meta.shape[1]
    for name, (shape, dtype) in described["inputs"].items():
        assert dtype == "float32"
        assert shape == [None, meta_dim if name.endswith("_meta") else 384]
    assert described["output"] == [None]


def test_export_rejects_existing_version(pipeline_run, tmp_path):
    config, result = pipeline_run
    inputs = feature_arrays(
        result.artifacts.training_set.validation, users=result.artifacts.training_profiles, glances=result.artifacts.glances
    )
    with pytest.raises(ExportError, match="already exists"):
        export_savedmodel(
            result.artifacts.train_result.model, models_root=config.out / "models", version=result.model_version, check_inputs=inputs
        )
    with pytest.raises(ExportError, match="same positive number of rows"):
        export_savedmodel(
            result.artifacts.train_result.model,
            models_root=tmp_path,
            version=1,
            check_inputs={name: array[:0] for name, array in inputs.items()},
        )


def test_snapshot_round_trip(pipeline_run):
    config, result = pipeline_run
    artifacts = result.artifacts
    manifest = read_manifest(result.snapshot_dir)
    assert manifest.version == result.snapshot_version
    assert manifest.num_shards == config.num_shards == 2
    assert manifest.meta_columns == artifacts.glances.vocabulary.columns
    assert manifest.embedding_dim == 384
    assert manifest.info["model_version"] == result.model_version
    assert 0.0 < manifest.fallback_score < 1.0

    glances = load_glances(result.snapshot_dir, manifest)
    assert glances.rejected == 0
    assert glances.ids.tolist() == artifacts.glances.ids.tolist()
    for section in ("meta", "image", "text"):
        np.testing.assert_array_equal(getattr(glances, section), getattr(artifacts.glances, section))

    profiles = artifacts.serving_profiles
    expected_rows = profiles.rows_of
    seen: list[str] = []
    for shard in range(manifest.num_shards):
        users = load_users(result.snapshot_dir, shard, manifest)
        assert users.rejected == 0
        assert len(users) > 0
        assert all(shard_of(user_id, manifest.num_shards) == shard for user_id in users.ids.tolist())
        rows = expected_rows(users.ids)
        assert (rows >= 0).all()
        for section in ("meta", "image", "text"):
            np.testing.assert_array_equal(getattr(users, section), getattr(profiles, section)[rows])
        np.testing.assert_array_equal(users.extra["peeks"], profiles.peeks[rows])
        np.testing.assert_array_equal(users.extra["impressions"], profiles.impressions[rows])
        seen.extend(users.ids.tolist())
    assert sorted(seen) == sorted(profiles.ids.tolist())
    for section in ("meta", "image", "text"):
        np.testing.assert_allclose(manifest.cold_start[section], profiles.cold_start[section], rtol=1e-6)


def test_snapshot_covers_test_day_glances(pipeline_run, mind_data):
    from model.dataset import held_out_impressions

    _, result = pipeline_run
    day = held_out_impressions(mind_data, result.artifacts.windows)
    requested = {glance for glances in day["glance_ids"] for glance in glances}
    with_content = requested & set(mind_data.glances.ids.tolist())
    assert with_content <= set(result.artifacts.glances.ids.tolist())


def test_pipeline_is_deterministic(pipeline_run, make_pipeline_config, tmp_path):
    from model.pipeline import run_pipeline

    _, first = pipeline_run
    second = run_pipeline(make_pipeline_config(tmp_path / "again"))
    assert second.metrics == first.metrics
    for before, after in zip(first.artifacts.train_result.model.get_weights(), second.artifacts.train_result.model.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_pipeline_rejects_taken_version(pipeline_run):
    from model.pipeline import run_pipeline

    config, result = pipeline_run
    with pytest.raises(FileExistsError, match=f"version {result.model_version} already exists"):
        run_pipeline(dataclasses.replace(config, version=result.model_version))

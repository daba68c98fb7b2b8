"""``fmlite train`` refuses bad arguments and data with one clear line and exit code 2."""

from __future__ import annotations

from feature_setup import run_fmlite


def test_out_file_is_refused(tmp_path):
    out = tmp_path / "artifacts"
    out.write_text("not a directory")
    result = run_fmlite("train", "--out", str(out), timeout_s=120)
    assert result.code == 2
    assert f"--out {out} is a file" in result.output
    assert "Traceback" not in result.output


def test_missing_data_directory_names_the_path(tmp_path):
    missing = tmp_path / "no-such-data"
    result = run_fmlite("train", "--data", str(missing), "--out", str(tmp_path / "out"), timeout_s=120)
    assert result.code == 2
    assert "MindFormatError" in result.output
    assert str(missing) in result.output
    assert "Traceback" not in result.output


def test_zero_epochs_is_refused(sample_dir, tmp_path):
    result = run_fmlite("train", "--data", str(sample_dir), "--out", str(tmp_path / "out"), "--epochs", "0", timeout_s=300)
    assert result.code == 2
    assert "epochs must be at least 1, got 0" in result.output

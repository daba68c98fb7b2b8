"""The locust file against a real platform on loopback: a headless run of a few seconds with 2 users."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fmlite.launcher import LocalPlatform

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def platform(trained_artifacts, tmp_path_factory):
    var = trained_artifacts.out_dir
    local = LocalPlatform(
        profiles=var / "profiles",
        models={"fmlite": var / "models" / "fmlite"},
        shards=2,
        leaves_per_shard=1,
        workdir=tmp_path_factory.mktemp("locust-platform"),
        l1_args=["--chunk-timeout-ms", "3000"],
    )
    local.start(timeout_s=300)
    yield local
    local.stop()


def run_locust(platform, var: Path, summary: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless", "--only-summary",
        "--host", f"http://{platform.l0_address}", "--users", "2", "--spawn-rate", "2", "--run-time", "5s",
        "--fmlite-var", str(var), "--fmlite-glances", "200", "--fmlite-timeout-ms", "3000",
        "--fmlite-summary", str(summary), *extra,
    ]
    return subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_headless_run_passes_gate(platform, trained_artifacts, tmp_path):
    summary_path = tmp_path / "summary.json"
    completed = run_locust(platform, trained_artifacts.out_dir, summary_path, "--fmlite-p99-gate-ms", "5000")
    assert completed.returncode == 0, f"locust failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-3000:]}"
    summary = json.loads(summary_path.read_text())
    assert summary["source"] == "raw client timings"
    assert summary["calls"] >= 2
    assert summary["errors"] == 0, summary["error_kinds"]
    assert summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    assert summary["l0_histogram_p99_bound_ms"] is not None
    assert summary["gate_passed"] is True


def test_gate_fails_run_above_p99(platform, trained_artifacts, tmp_path):
    summary_path = tmp_path / "summary.json"
    completed = run_locust(platform, trained_artifacts.out_dir, summary_path, "--fmlite-p99-gate-ms", "0.001")
    assert completed.returncode == 1
    summary = json.loads(summary_path.read_text())
    assert summary["gate_passed"] is False
    assert "FAILED" in completed.stdout

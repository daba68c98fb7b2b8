"""``fmlite bench`` end to end on the session's trained artifacts: a tiny run of every configuration.

Budgets are generous (2 s per request and per chunk) because CI machines are shared. The run
checks that every configuration is started, loaded and measured, not how fast it is.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
CONFIGURATION_KEYS = ("platform", "platform_savedmodel", "rpc_floor", "features_in_body")
FIELDS = ("predictions_per_cpu_second", "p50_ms", "p99_ms", "errors")


def run_bench(*arguments: str, timeout_s: float = 600.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmlite.cli", "bench", *arguments],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def tiny_run(trained_artifacts, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    completed = run_bench(
        "--var", str(trained_artifacts.out_dir), "--json", "--workdir", str(out / "servers"),
        "--rate", "10", "--rest-rate", "2", "--duration-s", "3", "--warmup-s", "0.3", "--glances", "200",
        "--timeout-ms", "2000", "--l1-arg=--chunk-timeout-ms=2000",
        "--sweep-chunk-sizes", "50", "--sweep-rates", "4", "--sweep-step-s", "1",
        "--plot", str(out / "sweep.png"), "--table", str(out / "sweep.md"), "--record", str(out / "record.md"),
    )
    assert completed.returncode == 0, f"bench failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    return completed, out


def test_json_line_has_every_configuration(tiny_run):
    completed, _ = tiny_run
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    for key in CONFIGURATION_KEYS:
        assert key in report, f"configuration {key} missing from the JSON line"
        for name in FIELDS:
            assert name in report[key], f"{key} lacks {name}"
        assert report[key]["errors"] == 0, f"{key} had errors: {report[key]['error_kinds']}"
        assert report[key]["predictions_per_cpu_second"] > 0
        assert report[key]["p50_ms"] <= report[key]["p99_ms"]
    assert report["leaf_kernel_speedup"] > 1.0
    assert report["leaf_kernel_us"]["max_abs_difference"] < 1e-5
    assert report["cores"] >= 1


def test_cpu_is_counted_per_tier(tiny_run):
    completed, _ = tiny_run
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    for key in ("platform", "platform_savedmodel", "rpc_floor"):
        tiers = report[key]["cpu_seconds_by_tier"]
        assert set(tiers) == {"l0", "l1", "leaf"}, f"{key}: {tiers}"
        # /proc counts CPU time in 10 ms ticks, so a tier of a tiny run may read 0. About 30
        # requests keep the sum of the cheapest configuration (the RPC floor) above one tick.
        assert all(seconds >= 0 for seconds in tiers.values()), f"{key}: {tiers}"
        assert sum(tiers.values()) > 0, f"{key}: {tiers}"
    assert set(report["features_in_body"]["cpu_seconds_by_tier"]) == {"rest"}


def test_table_sweep_and_record_are_written(tiny_run):
    completed, out = tiny_run
    assert "1 platform, default runner" in completed.stdout
    assert "4 REST, features in the body" in completed.stdout
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    variants = {(point["variant"], point["chunk_size"]) for point in report["sweep"]}
    assert variants == {("fmlite", 50), ("cosine", 50)}
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 50 |" in (out / "sweep.md").read_text()
    record = (out / "record.md").read_text()
    assert "cores" in record
    assert "| 1 platform, default runner |" in record


def test_missing_artifacts_is_clear_error(tmp_path):
    completed = run_bench("--var", str(tmp_path / "nothing"), "--no-sweep", timeout_s=60)
    assert completed.returncode == 2
    assert "no published profile snapshot" in completed.stderr


def test_unknown_configuration_is_rejected(trained_artifacts):
    completed = run_bench("--var", str(trained_artifacts.out_dir), "--configurations", "platform,warp_drive", timeout_s=60)
    assert completed.returncode == 2
    assert "warp_drive" in completed.stderr

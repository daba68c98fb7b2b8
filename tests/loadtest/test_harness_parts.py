"""Parts of the benchmark harness that need no server: CPU accounting, workload, REST body parsing."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from loadtest.cpu import ProcessGone, process_cpu_seconds
from loadtest.measure import Measurement, format_rate, tier_of
from loadtest.rest_peer import RestPredictError, parse_predict_body
from loadtest.workload import WorkloadError, load_workload

WIDTHS = {"user_meta": 3, "user_image": 2, "user_text": 2, "glance_meta": 3, "glance_image": 2, "glance_text": 2}


def test_cpu_seconds_grow_with_work():
    before = process_cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert process_cpu_seconds(os.getpid()) - before >= 0.2


def test_cpu_of_exited_process_raises():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(ProcessGone):
        process_cpu_seconds(child.pid)


@pytest.mark.parametrize("role, tier", [("platform-l0", "l0"), ("platform-l1-1", "l1"), ("rpc_floor-leaf-0-1", "leaf"), ("features_in_body-rest", "rest")])
def test_tier_of_role(role, tier):
    assert tier_of(role) == tier


def _measurement(cpu_seconds):
    return Measurement(
        name="platform", rate=10.0, duration_s=1.0, glances_per_request=100, sent=6, errors={}, predictions=600,
        p50_ms=5.0, p99_ms=9.0, max_ms=9.5, predictions_per_second=600.0, cpu_seconds=cpu_seconds,
    )


def test_cpu_below_one_tick_is_not_measured():
    idle = _measurement({"platform-l0": 0.0, "platform-leaf-0-0": 0.0})
    assert idle.predictions_per_cpu_second is None
    summary = idle.summary()
    assert summary["predictions_per_cpu_second"] is None
    assert summary["cpu_measured"] is False
    assert format_rate(idle.predictions_per_cpu_second) == "n/a"


def test_cpu_rate_counts_every_process():
    busy = _measurement({"platform-l0": 0.01, "platform-leaf-0-0": 0.02})
    assert busy.predictions_per_cpu_second == pytest.approx(600 / 0.03)
    assert busy.summary()["cpu_measured"] is True
    assert format_rate(busy.predictions_per_cpu_second) == "20,000"


def test_workload_draws_known_distinct_ids(trained_artifacts):
    workload = load_workload(trained_artifacts.out_dir / "profiles")
    requests = workload.sample(count=5, glances_per_request=50, seed=2)
    known_users, known_glances = set(workload.user_ids), set(workload.glance_ids)
    for user, glances in requests:
        assert user in known_users
        assert len(set(glances)) == 50
        assert set(glances) <= known_glances
    rows = workload.feature_rows(*requests[0])
    assert rows["glance_text"].shape == (50, workload.manifest.embedding_dim)
    assert np.array_equal(rows["user_meta"][0], rows["user_meta"][-1])


def test_workload_without_snapshot_is_error(tmp_path):
    with pytest.raises(WorkloadError, match="no published profile snapshot"):
        load_workload(tmp_path)


def row(**overrides):
    instance = {name: [0.5] * width for name, width in WIDTHS.items()}
    instance.update(overrides)
    return instance


def test_rest_rows_and_columns_decode_alike():
    rows = parse_predict_body(b'{"instances": [%s, %s]}' % (str(row()).replace("'", '"').encode(), str(row()).replace("'", '"').encode()), WIDTHS)
    columns = parse_predict_body(('{"inputs": {%s}}' % ", ".join(f'"{n}": [{[0.5] * w}, {[0.5] * w}]' for n, w in WIDTHS.items())).encode(), WIDTHS)
    for name in WIDTHS:
        assert rows[name].shape == (2, WIDTHS[name])
        assert np.array_equal(rows[name], columns[name])


@pytest.mark.parametrize(
    "body, message",
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"instances": []}', "non-empty list"),
        (b'{"rows": []}', "neither 'instances' nor 'inputs'"),
        (b'{"instances": [{"user_meta": [1, 2, 3]}]}', "lacks input 'user_image'"),
        (('{"instances": [%s]}' % str(row(glance_text=[1.0, 2.0, 3.0])).replace("'", '"')).encode(), "signature expects [N, 2]"),
        (('{"instances": [%s]}' % str(row(user_text=["a", "b"])).replace("'", '"')).encode(), "not a list of numbers"),
    ],
)
def test_rest_bad_body_is_rejected(body, message):
    with pytest.raises(RestPredictError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_predict_body(body, WIDTHS)

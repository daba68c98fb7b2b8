"""A bad traffic config stops ``fmlite up`` and ``serve-l0`` at once, with one line that names the problem."""

from __future__ import annotations

import json

from feature_setup import run_fmlite

BAD_POLICY = {
    "variants": {"fmlite": {}},
    "glance_stats": {"path": "profiles"},
    "buckets": [{"name": "all", "fraction": 1.0, "variant": "fmlite", "explore": {"policy": "ucb"}}],
}


def test_up_refuses_bad_config_before_training(tmp_path):
    config = tmp_path / "traffic.json"
    config.write_text(json.dumps(BAD_POLICY))
    var = tmp_path / "var"
    result = run_fmlite("up", "--var", str(var), "--traffic", str(config), timeout_s=120)
    assert result.code == 2
    assert "invalid traffic config" in result.output
    assert "explore.policy" in result.output
    assert "Traceback" not in result.output
    assert not (var / "models").exists()


def test_serve_l0_refuses_bad_config_without_traceback(tmp_path):
    config = tmp_path / "traffic.json"
    config.write_text("{not json")
    result = run_fmlite("serve-l0", "--shard", "0=127.0.0.1:9", "--traffic", str(config), timeout_s=120)
    assert result.code == 1
    assert f"invalid traffic config: traffic config {config} is not valid JSON" in result.output
    assert "Traceback" not in result.output

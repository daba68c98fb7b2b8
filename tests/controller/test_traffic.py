"""Traffic split config: validation messages name the key, and the split matches the fractions."""

import json

import pytest

from controller.traffic import TrafficConfigError, TrafficSplit, load_traffic

VALID = {
    "variants": {"fmlite": {}, "cosine": {}},
    "buckets": [
        {"name": "control", "fraction": 0.95, "variant": "fmlite"},
        {"name": "baseline", "fraction": 0.05, "variant": "cosine"},
    ],
}


def test_split_follows_fractions():
    split = TrafficSplit.from_dict(VALID)
    users = [f"u{i}" for i in range(40000)]
    share = sum(split.variant_for(u) == "cosine" for u in users) / len(users)
    assert abs(share - 0.05) < 0.006


def test_variant_stable_per_user():
    split = TrafficSplit.from_dict(VALID)
    assert all(split.variant_for("U81994") == split.variant_for("U81994") for _ in range(5))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"buckets": [{"name": "a", "fraction": 0.5, "variant": "fmlite"}]}, "sum to 0.5"),
        ({"buckets": [{"name": "a", "fraction": 1.0, "variant": "wide"}]}, r"buckets\[0\].variant 'wide'"),
        ({"buckets": [{"name": "a", "fraction": -1, "variant": "fmlite"}]}, r"buckets\[0\].fraction"),
        ({"buckets": [{"name": "a", "fraction": 1.0, "variant": "fmlite", "weight": 2}]}, "unknown keys"),
        ({"variants": {}}, "'variants'"),
        ({"extra": 1}, "unknown keys"),
    ],
)
def test_invalid_config_names_key(change, message):
    raw = {**VALID, **change}
    with pytest.raises(TrafficConfigError, match=message):
        TrafficSplit.from_dict(raw)


def test_load_from_file(tmp_path):
    path = tmp_path / "traffic.json"
    path.write_text(json.dumps(VALID))
    assert [b.name for b in load_traffic(path).buckets] == ["control", "baseline"]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(TrafficConfigError, match="not valid JSON"):
        load_traffic(tmp_path / "bad.json")
    with pytest.raises(TrafficConfigError, match="not found"):
        load_traffic(tmp_path / "missing.json")


def test_default_is_all_fmlite():
    assert load_traffic(None).variant_for("anyone") == "fmlite"

"""Combined variants: blending rules and the validation of their traffic config."""

from __future__ import annotations

import numpy as np
import pytest

from controller.combine import Rerank, WeightedSum, combine_scores
from controller.traffic import TrafficConfigError, TrafficSplit

BASE = {"fmlite": {}, "cosine": {}}


def config(variants: dict, bucket_variant: str = "blend") -> dict:
    return {"variants": {**BASE, **variants}, "buckets": [{"name": "all", "fraction": 1.0, "variant": bucket_variant}]}


def test_weighted_sum_blends_scores():
    scores = {"fmlite": np.array([0.9, 0.2, 0.5]), "cosine": np.array([0.1, 0.8, 0.5])}
    combined = combine_scores(WeightedSum((("fmlite", 0.75), ("cosine", 0.25))), scores)
    np.testing.assert_allclose(combined, [0.7, 0.35, 0.5])


def test_rerank_orders_top_k_by_secondary():
    primary = np.array([0.9, 0.1, 0.8, 0.7, 0.3, 0.6])
    secondary = np.array([0.1, 0.9, 0.5, 0.9, 0.9, 0.2])
    combined = combine_scores(Rerank("p", "s", 3), {"p": primary, "s": secondary})

    order = np.argsort(-combined, kind="stable")
    assert order[:3].tolist() == [3, 2, 0]
    assert sorted(combined[[0, 2, 3]].tolist(), reverse=True) == [0.9, 0.8, 0.7]
    assert order[3:].tolist() == [5, 4, 1]
    np.testing.assert_array_equal(combined[[1, 4, 5]], primary[[1, 4, 5]])


def test_rerank_breaks_primary_ties_by_secondary():
    primary = np.array([0.5, 0.5, 0.5, 0.5])
    secondary = np.array([0.1, 0.4, 0.3, 0.2])
    combined = combine_scores(Rerank("p", "s", 2), {"p": primary, "s": secondary})
    order = np.argsort(-combined, kind="stable")
    assert order[:2].tolist() == [1, 0]
    assert np.all(np.diff(combined[order]) <= 0)
    assert combined[[2, 3]].max() < combined[[0, 1]].min()


def test_rerank_with_top_k_above_length():
    primary = np.array([0.2, 0.4])
    combined = combine_scores(Rerank("p", "s", 50), {"p": primary, "s": np.array([0.9, 0.1])})
    assert np.argsort(-combined).tolist() == [0, 1]


def test_combined_variant_in_bucket():
    split = TrafficSplit.from_dict(config({"blend": {"combine": "weighted_sum", "weights": {"fmlite": 0.8, "cosine": 0.2}}}))
    assert split.variant_for("anyone") == "blend"
    assert split.base_variants == ("fmlite", "cosine")
    assert split.combinations["blend"].variants == ("fmlite", "cosine")


@pytest.mark.parametrize(
    "variants, message",
    [
        ({"blend": {"combine": "weighted_sum", "weights": {"fmlite": 0.8, "cosine": 0.3}}}, r"variants.blend.weights sum to 1.100000"),
        ({"blend": {"combine": "weighted_sum", "weights": {"fmlite": 0.8, "wide": 0.2}}}, r"variants.blend.weights key 'wide' is not a declared base variant"),
        ({"blend": {"combine": "weighted_sum", "weights": {"fmlite": 1.2, "cosine": -0.2}}}, r"variants.blend.weights.cosine must be a positive number"),
        ({"blend": {"combine": "weighted_sum", "weights": {"fmlite": 1.0}}}, r"variants.blend.weights must be an object with at least two"),
        ({"blend": {"combine": "average", "weights": {}}}, r"variants.blend.combine must be one of"),
        ({"blend": {"combine": "rerank", "primary": "cosine", "secondary": "cosine", "top_k": 5}}, r"variants.blend.secondary must differ"),
        ({"blend": {"combine": "rerank", "primary": "cosine", "secondary": "fmlite", "top_k": 0}}, r"variants.blend.top_k must be an integer"),
        ({"blend": {"combine": "rerank", "primary": "nope", "secondary": "fmlite", "top_k": 5}}, r"variants.blend.primary 'nope'"),
        ({"blend": {"combine": "rerank", "primary": "cosine", "secondary": "fmlite", "top_k": 5, "depth": 2}}, r"variants.blend has unknown keys \['depth'\]"),
        ({"blend": {"weights": {"fmlite": 0.5, "cosine": 0.5}}}, r"variants.blend has unknown keys \['weights'\]"),
        (
            {
                "inner": {"combine": "weighted_sum", "weights": {"fmlite": 0.5, "cosine": 0.5}},
                "blend": {"combine": "weighted_sum", "weights": {"inner": 0.5, "cosine": 0.5}},
            },
            r"variants.blend.weights key 'inner' is not a declared base variant",
        ),
    ],
)
def test_invalid_combination_names_key(variants, message):
    with pytest.raises(TrafficConfigError, match=message):
        TrafficSplit.from_dict(config(variants))

"""Chunk sizer: fits leaf-call cost, picks the fewest chunks that fit the budget share, stays in bounds."""

import math

import pytest
from prometheus_client import CollectorRegistry

from controller.chunking import MAX_GLANCES, AdaptiveChunkConfig, CallCostFit, ChunkSizer


def serve(sizer: ChunkSizer, *, fixed_s: float, per_glance_s: float, requests: int, count: int = 500,
          replicas: int = 1, budget_s: float = 0.030, configured: int = 100) -> list[int]:
    """Drive the sizer with leaves that serve calls one at a time at the given cost."""
    sizes = []
    for _ in range(requests):
        size = sizer.size("fmlite", configured, count=count, replicas=replicas, budget_s=budget_s)
        sizes.append(size)
        chunks = math.ceil(count / size)
        rounds = math.ceil(chunks / replicas)
        sizer.observe("fmlite", count=count, chunks=chunks, replicas=replicas,
                      seconds=rounds * (fixed_s + per_glance_s * count / chunks))
    return sizes


def test_disabled_keeps_configured_size():
    sizer = ChunkSizer(AdaptiveChunkConfig(enabled=False))
    assert serve(sizer, fixed_s=0.0001, per_glance_s=1e-7, requests=4) == [100] * 4


def test_fast_leaves_grow_in_steps_to_one_chunk():
    sizer = ChunkSizer(AdaptiveChunkConfig())
    assert serve(sizer, fixed_s=0.0005, per_glance_s=2e-6, requests=5) == [200, 400, 500, 500, 500]


def test_one_chunk_per_replica():
    sizer = ChunkSizer(AdaptiveChunkConfig())
    sizes = serve(sizer, fixed_s=0.0005, per_glance_s=2e-6, requests=6, count=1000, replicas=3)
    assert sizes[-1] == 334


def test_max_size_bounds_growth():
    sizer = ChunkSizer(AdaptiveChunkConfig(max_size=300))
    assert serve(sizer, fixed_s=0.0005, per_glance_s=2e-6, requests=4)[-1] == 300


def test_slow_leaf_shrinks_within_budget_share():
    config = AdaptiveChunkConfig(budget_share=0.5)
    sizer = ChunkSizer(config)
    serve(sizer, fixed_s=0.0005, per_glance_s=2e-6, requests=6)
    # The leaf slows to 100 us per id: 500 ids would take 50 ms of a 30 ms call budget.
    sizes = serve(sizer, fixed_s=0.0005, per_glance_s=1e-4, requests=12)
    fit = sizer.fits["fmlite"]
    assert sizes[-1] < 500
    assert fit.seconds(sizes[-1]) <= config.budget_share * 0.030 + 1e-9
    assert sizes[-1] >= config.min_size


def test_shrinking_stops_at_floor():
    sizer = ChunkSizer(AdaptiveChunkConfig(min_size=50))
    sizes = serve(sizer, fixed_s=0.020, per_glance_s=1e-4, requests=8)
    assert min(sizes) == 50


def test_small_request_is_one_chunk():
    sizer = ChunkSizer(AdaptiveChunkConfig(min_size=50))
    serve(sizer, fixed_s=0.020, per_glance_s=1e-4, requests=4)
    assert sizer.size("fmlite", 100, count=30, replicas=1, budget_s=0.030) == 30


def test_variants_are_fitted_separately():
    sizer = ChunkSizer(AdaptiveChunkConfig())
    sizer.observe("fmlite", count=500, chunks=5, replicas=1, seconds=0.010)
    assert "cosine" not in sizer.fits
    assert sizer.size("cosine", 400, count=1000, replicas=1, budget_s=0.030) == 800


def test_fit_separates_fixed_and_per_glance_cost():
    fit = CallCostFit(sample_weight=0.2)
    for size in (100, 200, 400, 500, 300, 100):
        fit.add(size, 0.001 + 1e-5 * size)
    assert fit.fixed_s == pytest.approx(0.001)
    assert fit.per_glance_s == pytest.approx(1e-5)


def test_fit_of_one_size_charges_per_glance():
    fit = CallCostFit(sample_weight=0.2)
    for _ in range(5):
        fit.add(500, 0.005)
    assert fit.fixed_s == 0.0
    assert fit.per_glance_s == pytest.approx(1e-5)


def test_gauges_report_size_and_fit():
    registry = CollectorRegistry()
    sizer = ChunkSizer(AdaptiveChunkConfig(), registry=registry)
    serve(sizer, fixed_s=0.001, per_glance_s=1e-5, requests=4)
    labels = {"tier": "l1", "variant": "fmlite"}
    assert registry.get_sample_value("fmlite_adaptive_chunk_size", labels) == 500
    assert registry.get_sample_value("fmlite_leaf_call_per_glance_seconds", labels) > 0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"min_size": 0}, "min_size"),
        ({"max_size": 10}, "max_size"),
        ({"max_size": MAX_GLANCES + 1}, "max_size"),
        ({"budget_share": 0.0}, "budget_share"),
        ({"budget_share": 1.5}, "budget_share"),
        ({"max_growth": 0.5}, "max_growth"),
        ({"sample_weight": 0.0}, "sample_weight"),
    ],
)
def test_invalid_config_is_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveChunkConfig(**options)

"""Adaptive chunk size: grows while fan-outs are fast, shrinks back after slow ones, stays in bounds."""

import pytest
from prometheus_client import CollectorRegistry

from controller.chunking import AdaptiveChunkConfig, ChunkSizer


def drive(sizer: ChunkSizer, seconds: float, requests: int, configured: int = 100) -> list[int]:
    sizes = []
    for _ in range(requests):
        sizes.append(sizer.size("fmlite", configured))
        sizer.observe("fmlite", configured, seconds)
    return sizes


def test_off_by_default_keeps_configured_size():
    sizer = ChunkSizer(AdaptiveChunkConfig())
    assert drive(sizer, 0.0001, 5) == [100] * 5


def test_fast_fanouts_grow_to_maximum_in_steps():
    sizer = ChunkSizer(AdaptiveChunkConfig(target_ms=10.0, max_size=1000, max_step=2.0))
    assert drive(sizer, 0.001, 6) == [100, 200, 400, 800, 1000, 1000]


def test_slow_fanouts_never_go_below_configured():
    sizer = ChunkSizer(AdaptiveChunkConfig(target_ms=10.0, smoothing=1.0))
    drive(sizer, 0.001, 3)
    assert sizer.size("fmlite", 100) == 800
    assert drive(sizer, 0.2, 5)[1:] == [400, 200, 100, 100]


def test_size_holds_just_below_target():
    sizer = ChunkSizer(AdaptiveChunkConfig(target_ms=10.0, smoothing=1.0))
    drive(sizer, 0.001, 2)
    assert drive(sizer, 0.009, 4) == [400] * 4


def test_variants_adapt_separately():
    sizer = ChunkSizer(AdaptiveChunkConfig(target_ms=10.0))
    sizer.observe("fmlite", 100, 0.001)
    assert sizer.size("fmlite", 100) == 200
    assert sizer.size("cosine", 400) == 400


def test_gauge_reports_chosen_size():
    registry = CollectorRegistry()
    sizer = ChunkSizer(AdaptiveChunkConfig(target_ms=10.0), registry=registry)
    sizer.observe("fmlite", 100, 0.001)
    assert registry.get_sample_value("fmlite_adaptive_chunk_size", {"tier": "l1", "variant": "fmlite"}) == 200


@pytest.mark.parametrize(
    "options, message",
    [
        ({"target_ms": -1.0}, "target_ms"),
        ({"max_size": 0}, "max_size"),
        ({"smoothing": 0.0}, "smoothing"),
        ({"max_step": 0.5}, "max_step"),
    ],
)
def test_invalid_config_is_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveChunkConfig(**options)

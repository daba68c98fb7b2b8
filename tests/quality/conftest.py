"""Fixtures of the quality tests: the real MIND sample and one small simulated dataset per session.

Text embeddings go to the same pytest cache directory as the pipeline tests
(``.pytest_cache/d/fmlite-text-embeddings``), so texts those tests encoded are not encoded
again. With ``-p no:cacheprovider`` a temporary directory is used instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from model.simulate import SimulationConfig, SimulationResult, simulate

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SAMPLE_DIR = SHARED_DATA / "mind-small-sample"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    if not (SAMPLE_DIR / "behaviors.tsv").is_file():
        pytest.fail(f"the MIND sample is missing at {SAMPLE_DIR}; these tests need the real data")
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def quality_text_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("fmlite-text-embeddings"))
    return tmp_path_factory.mktemp("text-cache")


def small_simulation_config(sample_dir: Path, *, seed: int = 3, users: int = 400) -> SimulationConfig:
    """Return the configuration of the small dataset: 6 days, 300 content rows of the sample."""
    return SimulationConfig(sample_dir=sample_dir, users=users, days=6, seed=seed, content_limit=300)


@pytest.fixture(scope="session")
def small_simulation(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SimulationResult:
    return simulate(small_simulation_config(sample_dir), tmp_path_factory.mktemp("simulated"))

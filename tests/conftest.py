"""Fixtures shared by every test package: the real MIND sample and one pipeline run per session.

Text embeddings are cached in pytest's cache directory (``.pytest_cache/d/``), keyed by the
text's SHA-256 and the model files' hash, so only the first run on a machine pays for encoding
the sample with all-MiniLM-L6-v2 (about a minute on 2 cores); ``-p no:cacheprovider`` or a
fresh checkout encodes again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from model.config import PipelineConfig, TrainConfig
from model.mind import read_mind
from model.tables import SourceData

# The real sample, beside the repository as the CI lays it out.
SAMPLE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mind-small-sample"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    if not (SAMPLE_DIR / "behaviors.tsv").is_file():
        pytest.fail(f"the MIND sample is missing at {SAMPLE_DIR}; these tests need the real data")
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def mind_data(sample_dir: Path) -> SourceData:
    return read_mind(sample_dir)


@pytest.fixture(scope="session")
def text_cache_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("fmlite-text-embeddings"))
    return tmp_path_factory.mktemp("text-cache")


@pytest.fixture(scope="session")
def text_encoder(text_cache_dir: Path):
    from model.text_encoder import TextEncoder

    return TextEncoder(cache_dir=text_cache_dir)


@pytest.fixture(scope="session")
def make_pipeline_config(text_cache_dir: Path, sample_dir: Path) -> Callable[[Path], PipelineConfig]:
    """Return a factory of the small test configuration: 3 epochs, logged glances only, seed 7."""

    def make(out: Path) -> PipelineConfig:
        return PipelineConfig(
            data_dir=sample_dir,
            out=out,
            text_cache_dir=text_cache_dir,
            glance_scope="logged",
            progress=False,
            seed=7,
            train=TrainConfig(epochs=3, patience=1),
        )

    return make


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory, make_pipeline_config: Callable[[Path], PipelineConfig]):
    """Run the pipeline once for the session and return ``(config, result)``."""
    from model.pipeline import run_pipeline

    config = make_pipeline_config(tmp_path_factory.mktemp("pipeline"))
    return config, run_pipeline(config)


@dataclass(frozen=True)
class TrainedArtifacts:
    """Root of a pipeline run's output: ``profiles/``, ``models/fmlite/``, ``reports/``."""

    out_dir: Path


@pytest.fixture(scope="session")
def trained_artifacts(request: pytest.FixtureRequest) -> TrainedArtifacts:
    """The session's pipeline run, or the artifact root named by ``FMLITE_TEST_ARTIFACTS``.

    The pipeline fixture is requested only when no root is named, so naming one skips training.
    """
    existing = os.environ.get("FMLITE_TEST_ARTIFACTS")
    if existing:
        return TrainedArtifacts(Path(existing))
    config, _ = request.getfixturevalue("pipeline_run")
    return TrainedArtifacts(config.out)

"""Fixtures of the leaf tests that need the real trained model."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmlite import snapshot
from leaf_models import RealModel, export_random_model


@pytest.fixture(scope="session")
def real_model(trained_artifacts) -> RealModel:
    base = trained_artifacts.out_dir / "models" / "fmlite"
    version = max(int(p.name) for p in base.iterdir() if p.name.isdigit())
    root = trained_artifacts.out_dir / "profiles"
    manifest = snapshot.read_manifest(root / str(snapshot.current_version(root)))
    return RealModel(base=base, version=version, profiles_root=root, manifest=manifest)


@pytest.fixture(scope="session")
def random_model(real_model, tmp_path_factory) -> Path:
    """A second, differently weighted FM-Lite version exported by the real export path."""
    root = tmp_path_factory.mktemp("random-model")
    return export_random_model(real_model, root, real_model.version + 1, seed=11)

"""Helpers of the leaf tests: the session's trained model, real check rows and extra model versions."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmlite import snapshot


@dataclass(frozen=True)
class RealModel:
    """The session's trained FM-Lite version and the snapshot it was exported with."""

    base: Path
    version: int
    profiles_root: Path
    manifest: snapshot.Manifest

    @property
    def path(self) -> Path:
        return self.base / str(self.version)


def check_inputs(manifest: snapshot.Manifest, root: Path, rows: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Return real (user, glance) rows of the snapshot as the six signature inputs."""
    directory = root / str(manifest.version)
    glances = snapshot.load_glances(directory, manifest)
    users = snapshot.load_users(directory, 0, manifest)
    rng = np.random.default_rng(seed)
    user_rows = rng.integers(0, len(users), rows)
    glance_rows = rng.integers(0, len(glances), rows)
    arrays = {}
    for section in ("meta", "image", "text"):
        arrays[f"user_{section}"] = getattr(users, section)[user_rows]
        arrays[f"glance_{section}"] = getattr(glances, section)[glance_rows]
    return arrays


def export_random_model(real: RealModel, models_root: Path, version: int, *, seed: int, config=None, every_weight: bool = False) -> Path:
    """Export an FM-Lite model with random weights (seeded) as ``<models_root>/fmlite/<version>``.

    By default the layers keep their initialisers (the identity-initialised meta towers stay the
    identity); ``every_weight`` draws every weight and bias at random instead.
    """
    import keras

    from model.config import FMLiteConfig
    from model.export import export_savedmodel
    from model.fmlite_model import build_fmlite

    keras.utils.set_random_seed(seed)
    config = config or FMLiteConfig()
    model = build_fmlite(meta_dim=real.manifest.meta_dim, embedding_dim=real.manifest.embedding_dim, config=config)
    if every_weight:
        rng = np.random.default_rng(seed)
        model.set_weights([rng.normal(scale=0.2, size=weight.shape).astype(np.float32) for weight in model.get_weights()])
    return export_savedmodel(
        model,
        models_root=models_root,
        version=version,
        check_inputs=check_inputs(real.manifest, real.profiles_root),
        metadata={
            "meta_columns": list(real.manifest.meta_columns),
            "embedding_dim": real.manifest.embedding_dim,
            "config": {"activation": config.activation, "meta_units": None if config.meta_units is None else list(config.meta_units)},
        },
    )


def copy_version(source: Path, base: Path, version: int) -> Path:
    """Copy a model version directory to ``<base>/<version>`` (written aside, then renamed)."""
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".{version}.copy"
    shutil.copytree(source, staging)
    target = base / str(version)
    staging.rename(target)
    return target

"""Model versions on disk in TensorFlow Serving's layout, and the checks every runner shares.

A variant's base directory contains one directory per integer version, ``<base>/<version>/``, with
``saved_model.pb``, ``variables/`` and ``assets.extra/``. A directory whose name is not an
integer (an export still in staging) is ignored, as TensorFlow Serving ignores it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from fmlite.signature import INPUT_NAMES, OUTPUT_NAME, SIGNATURE_NAME

__all__ = [
    "MODEL_METADATA_FILE",
    "ModelLoadError",
    "model_versions",
    "latest_model_version",
    "read_model_metadata",
    "check_signature",
    "signature_widths",
]

# Written by the export beside the SavedModel: input widths, meta columns, layer layout.
MODEL_METADATA_FILE = "assets.extra/fmlite_model.json"


class ModelLoadError(Exception):
    """A model version is missing, fails to load, has an unexpected signature or fails its check."""


def model_versions(base: str | Path) -> list[int]:
    """Return the complete integer versions under ``base``, oldest first."""
    base = Path(base)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and (p / "saved_model.pb").exists())


def latest_model_version(base: str | Path) -> int:
    """Return the largest complete integer version under ``base``."""
    versions = model_versions(base)
    if not versions:
        raise ModelLoadError(f"no model version under {base}; expected {base}/<integer version>/saved_model.pb")
    return versions[-1]


def read_model_metadata(path: str | Path) -> Mapping[str, Any]:
    """Return ``assets.extra/fmlite_model.json`` of the version in ``path``, or {} when it has none."""
    file = Path(path) / MODEL_METADATA_FILE
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{file} is not valid JSON: {error}") from error


def signature_widths(function: Any, path: str | Path) -> dict[str, int]:
    """Return the input widths of a loaded ``serving_default`` function; raise on a foreign signature."""
    specs = function.structured_input_signature[1]
    if set(specs) != set(INPUT_NAMES):
        raise ModelLoadError(f"SavedModel {path} signature inputs are {sorted(specs)}; expected {sorted(INPUT_NAMES)}")
    widths = {}
    for name, spec in specs.items():
        shape = spec.shape.as_list()
        if spec.dtype.name != "float32" or len(shape) != 2 or shape[1] is None:
            raise ModelLoadError(f"SavedModel {path} input {name!r} is {spec.dtype.name} {shape}; expected float32 [None, width]")
        widths[name] = int(shape[1])
    if OUTPUT_NAME not in function.structured_outputs:
        raise ModelLoadError(f"SavedModel {path} signature has no output {OUTPUT_NAME!r}")
    return widths


def check_signature(loaded: Any, path: str | Path) -> tuple[Any, dict[str, int]]:
    """Return the ``serving_default`` function of a loaded SavedModel and its input widths."""
    if SIGNATURE_NAME not in loaded.signatures:
        raise ModelLoadError(f"SavedModel {path} has no {SIGNATURE_NAME!r} signature; found {list(loaded.signatures)}")
    function = loaded.signatures[SIGNATURE_NAME]
    return function, signature_widths(function, path)

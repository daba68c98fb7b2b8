"""Serving signature of every exported scoring model (SavedModel ``serving_default``).

Inputs are float32 matrices with one row per (user, glance) pair, named ``<side>_<section>``;
the output ``score`` is a float32 vector of peek probabilities in ``[0, 1]``. Model versions
follow TensorFlow Serving's layout: ``<base>/<version>/saved_model.pb`` with an integer version.
"""

from __future__ import annotations

__all__ = ["SIGNATURE_NAME", "INPUT_NAMES", "OUTPUT_NAME", "input_name"]

SIGNATURE_NAME = "serving_default"
OUTPUT_NAME = "score"
INPUT_NAMES = (
    "user_meta",
    "user_image",
    "user_text",
    "glance_meta",
    "glance_image",
    "glance_text",
)


def input_name(side: str, section: str) -> str:
    """Return the signature input name of ``section`` (meta, image, text) on ``side`` (user, glance)."""
    name = f"{side}_{section}"
    if name not in INPUT_NAMES:
        raise ValueError(f"unknown signature input {name!r}; expected one of {INPUT_NAMES}")
    return name

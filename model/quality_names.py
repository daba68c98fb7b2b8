"""Names of the compared models and of the FM-Lite ablations, importable without TensorFlow.

The command line builds its help text from these before any model code loads, so a command
of another tier (``fmlite serve-l0``) imports neither Keras, torch nor pandas through the
quality commands.
"""

from __future__ import annotations

__all__ = ["MODEL_NAMES", "DISPLAY_NAMES", "FMLITE_NAMES", "ABLATION_NAMES", "POOLINGS"]

# Models in the order of the comparison table.
MODEL_NAMES = ("baseline", "linear", "dense", "wide_deep", "fmlite")
DISPLAY_NAMES = {
    "baseline": "Baseline (cosine)",
    "linear": "Linear",
    "dense": "Dense",
    "wide_deep": "Wide & Deep",
    "fmlite": "FM-Lite",
}
FMLITE_NAMES = ("fmlite",)
# FM-Lite ablations, each one change to the main FM-Lite row (see ``model.evaluate.ABLATIONS``).
ABLATION_NAMES = ("no_normalisation", "no_decay", "no_history_imputation", "plain_rates", "narrow_meta", "negatives_1", "negatives_4", "negatives_all")
# Poolings of the sentence encoder compared by ``fmlite finetune-text``: mean, max, [CLS] token.
POOLINGS = ("mean", "max", "cls")

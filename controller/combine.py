"""Combined variants: one request scored by several base variants and blended into one score list.

A combined variant is declared in the traffic config's ``variants`` beside the base variants
that the leaves serve, and a bucket selects it by name like any variant::

    "blend": {"combine": "weighted_sum", "weights": {"fmlite": 0.8, "cosine": 0.2}}
    "cosine_by_fmlite": {"combine": "rerank", "primary": "cosine", "secondary": "fmlite", "top_k": 50}

- ``weighted_sum``: ``score = sum_v w_v * score_v`` over two or more base variants, with positive
  weights that sum to 1, so a blend of probabilities stays a probability.
- ``rerank``: the ``top_k`` positions by the primary's score are put in the secondary's order,
  the rest keep the primary's order below them. The top-k positions take the primary's top-k
  score values, handed out in the secondary's order, so every score still comes from the primary
  model and the top k still score above the rest. Where primary scores are equal, the later
  ones are lowered by the smallest float step so that the served order is strict.

L0 scores the request with each base variant in parallel; the response carries the blended
scores and each base variant's scores in ``variant_scores``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Union

import numpy as np

__all__ = ["CombineConfigError", "WeightedSum", "Rerank", "Combination", "COMBINE_KEY", "parse_combination", "combine_scores"]

# Key of a variant's options that makes it a combined variant.
COMBINE_KEY = "combine"
# Largest top_k of a rerank; a request carries at most this many glance ids.
_MAX_TOP_K = 10_000


class CombineConfigError(ValueError):
    """A combined variant in the traffic config is invalid; the message names the key."""


@dataclass(frozen=True)
class WeightedSum:
    """Weighted sum of base variants' scores; weights are positive and sum to 1."""

    weights: tuple[tuple[str, float], ...]

    method = "weighted_sum"

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.weights)


@dataclass(frozen=True)
class Rerank:
    """The primary's top ``top_k`` positions re-ordered by the secondary's scores."""

    primary: str
    secondary: str
    top_k: int

    method = "rerank"

    @property
    def variants(self) -> tuple[str, ...]:
        return (self.primary, self.secondary)


Combination = Union[WeightedSum, Rerank]

_KEYS = {
    "weighted_sum": {COMBINE_KEY, "weights", "description"},
    "rerank": {COMBINE_KEY, "primary", "secondary", "top_k", "description"},
}


def _base_variant(value: Any, key: str, base_variants: Collection[str]) -> str:
    if value not in base_variants:
        raise CombineConfigError(f"{key} {value!r} is not a declared base variant; declared: {sorted(base_variants)}")
    return value


def parse_combination(raw: Mapping[str, Any], where: str, *, base_variants: Collection[str]) -> Combination:
    """Validate the options of one combined variant; ``where`` (e.g. ``variants.blend``) names it in errors."""
    method = raw.get(COMBINE_KEY)
    if method not in _KEYS:
        raise CombineConfigError(f"{where}.{COMBINE_KEY} must be one of {sorted(_KEYS)}, got {method!r}")
    unknown = set(raw) - _KEYS[method]
    if unknown:
        raise CombineConfigError(f"{where} has unknown keys {sorted(unknown)}; a {method} variant takes {sorted(_KEYS[method])}")
    if method == "weighted_sum":
        weights = raw.get("weights")
        if not isinstance(weights, Mapping) or len(weights) < 2:
            raise CombineConfigError(f"{where}.weights must be an object with at least two base variants, got {weights!r}")
        parsed = []
        for name, weight in weights.items():
            key = f"{where}.weights.{name}"
            _base_variant(name, f"{where}.weights key", base_variants)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
                raise CombineConfigError(f"{key} must be a positive number, got {weight!r}")
            parsed.append((name, float(weight)))
        total = sum(weight for _, weight in parsed)
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise CombineConfigError(f"{where}.weights sum to {total:.6f}; they must sum to 1")
        return WeightedSum(weights=tuple(parsed))
    primary = _base_variant(raw.get("primary"), f"{where}.primary", base_variants)
    secondary = _base_variant(raw.get("secondary"), f"{where}.secondary", base_variants)
    if primary == secondary:
        raise CombineConfigError(f"{where}.secondary must differ from {where}.primary, both are {primary!r}")
    top_k = raw.get("top_k")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= _MAX_TOP_K:
        raise CombineConfigError(f"{where}.top_k must be an integer in [1, {_MAX_TOP_K}], got {top_k!r}")
    return Rerank(primary=primary, secondary=secondary, top_k=top_k)


def combine_scores(combination: Combination, scores: Mapping[str, np.ndarray]) -> np.ndarray:
    """Return the combined scores of one request from each base variant's scores (same positions)."""
    arrays = {name: np.asarray(scores[name], dtype=np.float64) for name in combination.variants}
    lengths = {len(array) for array in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(f"base variants returned different numbers of scores: { {name: len(a) for name, a in arrays.items()} }")
    if isinstance(combination, WeightedSum):
        total = np.zeros(lengths.pop())
        for name, weight in combination.weights:
            total += weight * arrays[name]
        return total
    primary, secondary = arrays[combination.primary], arrays[combination.secondary]
    top = np.argsort(-primary, kind="stable")[: combination.top_k]
    combined = primary.copy()
    # The top positions in the secondary's order; ties keep the primary's order.
    reordered = top[np.argsort(-secondary[top], kind="stable")]
    values = primary[top].copy()
    # Equal primary scores (unknown glances share the fallback score) would let a client order
    # them by position instead of by the secondary, so each value is kept strictly below the one
    # before it, and the other positions strictly below the last top value.
    for index in range(1, len(values)):
        values[index] = min(values[index], np.nextafter(values[index - 1], -np.inf))
    combined[reordered] = values
    rest = np.ones(len(primary), dtype=bool)
    rest[top] = False
    if rest.any() and len(values):
        combined[rest] = np.minimum(primary[rest], np.nextafter(values[-1], -np.inf))
    return combined

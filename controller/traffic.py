"""Config-driven traffic split between model variants (experiment buckets).

A config is JSON::

    {"variants": {"fmlite": {}, "cosine": {}},
     "buckets": [{"name": "control", "fraction": 0.95, "variant": "fmlite"},
                 {"name": "baseline", "fraction": 0.05, "variant": "cosine"}]}

A user's bucket comes from ``fmlite.sharding.bucket_of`` (a hash independent of the shard hash),
so the same user always sees the same variant and the split is uniform over shards. Buckets
take consecutive ranges of the 10,000 hash buckets in the order listed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from fmlite.sharding import BUCKETS, bucket_of

__all__ = ["TrafficConfigError", "Bucket", "TrafficSplit", "load_traffic", "DEFAULT_TRAFFIC"]


class TrafficConfigError(ValueError):
    """The traffic config is invalid; the message names the offending key."""


@dataclass(frozen=True)
class Bucket:
    name: str
    fraction: float
    variant: str
    # Half-open range [start, end) of hash buckets.
    start: int
    end: int


@dataclass(frozen=True)
class TrafficSplit:
    """Validated traffic split: which variant serves which hash buckets."""

    variants: Mapping[str, Mapping[str, Any]]
    buckets: tuple[Bucket, ...]

    def bucket_for(self, user_id: str) -> Bucket:
        position = bucket_of(user_id)
        for bucket in self.buckets:
            if position < bucket.end:
                return bucket
        return self.buckets[-1]

    def variant_for(self, user_id: str) -> str:
        return self.bucket_for(user_id).variant

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "TrafficSplit":
        if not isinstance(raw, Mapping):
            raise TrafficConfigError(f"traffic config must be a JSON object, got {type(raw).__name__}")
        unknown_keys = set(raw) - {"variants", "buckets"}
        if unknown_keys:
            raise TrafficConfigError(f"traffic config has unknown keys {sorted(unknown_keys)}; expected variants, buckets")
        variants = raw.get("variants")
        if not isinstance(variants, Mapping) or not variants:
            raise TrafficConfigError("traffic config key 'variants' must be a non-empty object of variant names")
        for name, options in variants.items():
            if not isinstance(name, str) or not name:
                raise TrafficConfigError(f"variants: invalid variant name {name!r}")
            if not isinstance(options, Mapping):
                raise TrafficConfigError(f"variants.{name} must be an object, got {type(options).__name__}")
        raw_buckets = raw.get("buckets")
        if not isinstance(raw_buckets, list) or not raw_buckets:
            raise TrafficConfigError("traffic config key 'buckets' must be a non-empty list")
        buckets: list[Bucket] = []
        seen: set[str] = set()
        total = 0.0
        start = 0
        for index, entry in enumerate(raw_buckets):
            where = f"buckets[{index}]"
            if not isinstance(entry, Mapping):
                raise TrafficConfigError(f"{where} must be an object")
            extra = set(entry) - {"name", "fraction", "variant"}
            if extra:
                raise TrafficConfigError(f"{where} has unknown keys {sorted(extra)}")
            name = entry.get("name", f"bucket{index}")
            if not isinstance(name, str) or not name or name in seen:
                raise TrafficConfigError(f"{where}.name must be a unique non-empty string, got {name!r}")
            seen.add(name)
            fraction = entry.get("fraction")
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
                raise TrafficConfigError(f"{where}.fraction must be a number in (0, 1], got {fraction!r}")
            variant = entry.get("variant")
            if variant not in variants:
                raise TrafficConfigError(f"{where}.variant {variant!r} is not a declared variant; declared: {sorted(variants)}")
            total += float(fraction)
            end = BUCKETS if index == len(raw_buckets) - 1 else int(round(total * BUCKETS))
            buckets.append(Bucket(name=name, fraction=float(fraction), variant=variant, start=start, end=end))
            start = end
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise TrafficConfigError(f"bucket fractions sum to {total:.6f}; they must sum to 1")
        return cls(variants=dict(variants), buckets=tuple(buckets))


# Every user on FM-Lite; the cosine baseline is declared so that a caller may ask for it.
DEFAULT_TRAFFIC = TrafficSplit.from_dict(
    {"variants": {"fmlite": {}, "cosine": {}}, "buckets": [{"name": "all", "fraction": 1.0, "variant": "fmlite"}]}
)


def load_traffic(path: str | Path | None) -> TrafficSplit:
    """Load and validate a traffic config file; None gives ``DEFAULT_TRAFFIC``."""
    if path is None:
        return DEFAULT_TRAFFIC
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TrafficConfigError(f"traffic config not found: {path}") from None
    except json.JSONDecodeError as error:
        raise TrafficConfigError(f"traffic config {path} is not valid JSON: {error}") from None
    return TrafficSplit.from_dict(raw)

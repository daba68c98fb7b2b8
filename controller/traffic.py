"""Config-driven traffic split between model variants (experiment buckets).

A config is JSON::

    {"variants": {"fmlite": {}, "cosine": {},
                  "blend": {"combine": "weighted_sum", "weights": {"fmlite": 0.8, "cosine": 0.2}}},
     "glance_stats": {"path": "/var/lib/fmlite/profiles", "reload_interval_s": 30},
     "reload_interval_s": 5,
     "buckets": [{"name": "control", "fraction": 0.90, "variant": "fmlite"},
                 {"name": "baseline", "fraction": 0.05, "variant": "cosine"},
                 {"name": "fresh", "fraction": 0.05, "variant": "blend",
                  "explore": {"policy": "epsilon_greedy", "epsilon": 0.1, "max_age_hours": 6}}]}

A user's bucket comes from ``fmlite.sharding.bucket_of`` (a hash independent of the shard hash),
so the same user always sees the same variant and the split is uniform over shards. Buckets
take consecutive ranges of the 10,000 hash buckets in the order listed.

A variant with a ``combine`` key is a combined variant (``controller.combine``) of base variants;
every other variant is served by the leaves and takes no options. A bucket's ``explore`` object
is its exploration policy (``controller.explore``), which needs ``glance_stats``: a statistics
file or a profile snapshot root (``fmlite.glance_stats``); a relative path is taken from the
config file's directory. L0 reads the config file again every ``reload_interval_s`` seconds and
the statistics every ``glance_stats.reload_interval_s`` seconds (``controller.experiments``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from controller.combine import COMBINE_KEY, Combination, CombineConfigError, parse_combination
from controller.explore import ExplorationPolicy, ExploreConfigError, parse_policy
from fmlite.sharding import BUCKETS, bucket_of

__all__ = ["TrafficConfigError", "Bucket", "GlanceStatsSource", "TrafficSplit", "load_traffic", "DEFAULT_TRAFFIC"]

# Keys a variant's options may hold without a ``combine`` key.
_BASE_VARIANT_KEYS = {"description"}
_TOP_KEYS = {"variants", "buckets", "glance_stats", "reload_interval_s"}


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
    # Exploration policy applied after scoring; None scores without exploration.
    explore: ExplorationPolicy | None = None


@dataclass(frozen=True)
class GlanceStatsSource:
    """Location of the glance statistics that L0 reads, and the interval between checks for a new version."""

    # A statistics file, or a profile snapshot root whose CURRENT version contains one.
    path: Path
    reload_interval_s: float = 30.0


@dataclass(frozen=True)
class TrafficSplit:
    """Validated traffic split: which variant serves which hash buckets."""

    variants: Mapping[str, Mapping[str, Any]]
    buckets: tuple[Bucket, ...]
    # Combined variant name -> how it blends base variants.
    combinations: Mapping[str, Combination] = field(default_factory=dict)
    glance_stats: GlanceStatsSource | None = None
    # Seconds between checks of the config file for changes; 0 turns reloading off.
    reload_interval_s: float = 5.0
    # File the split was read from, and the SHA-256 of its bytes (first 12 hex digits).
    source: Path | None = None
    digest: str = ""

    @property
    def base_variants(self) -> tuple[str, ...]:
        """Return the variants that the leaves serve, in config order."""
        return tuple(name for name in self.variants if name not in self.combinations)

    def bucket_for(self, user_id: str) -> Bucket:
        position = bucket_of(user_id)
        for bucket in self.buckets:
            if position < bucket.end:
                return bucket
        return self.buckets[-1]

    def variant_for(self, user_id: str) -> str:
        return self.bucket_for(user_id).variant

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, base_dir: Path | None = None) -> "TrafficSplit":
        """Validate a parsed config; ``base_dir`` resolves a relative ``glance_stats.path``."""
        if not isinstance(raw, Mapping):
            raise TrafficConfigError(f"traffic config must be a JSON object, got {type(raw).__name__}")
        unknown_keys = set(raw) - _TOP_KEYS
        if unknown_keys:
            raise TrafficConfigError(f"traffic config has unknown keys {sorted(unknown_keys)}; expected {', '.join(sorted(_TOP_KEYS))}")
        variants = raw.get("variants")
        if not isinstance(variants, Mapping) or not variants:
            raise TrafficConfigError("traffic config key 'variants' must be a non-empty object of variant names")
        for name, options in variants.items():
            if not isinstance(name, str) or not name:
                raise TrafficConfigError(f"variants: invalid variant name {name!r}")
            if not isinstance(options, Mapping):
                raise TrafficConfigError(f"variants.{name} must be an object, got {type(options).__name__}")
            if COMBINE_KEY not in options and set(options) - _BASE_VARIANT_KEYS:
                raise TrafficConfigError(
                    f"variants.{name} has unknown keys {sorted(set(options) - _BASE_VARIANT_KEYS)}; "
                    f"a base variant takes {sorted(_BASE_VARIANT_KEYS)}, a combined variant needs {COMBINE_KEY!r}"
                )
        base = [name for name, options in variants.items() if COMBINE_KEY not in options]
        if not base:
            raise TrafficConfigError("variants: at least one base variant (without 'combine') must be declared")
        combinations: dict[str, Combination] = {}
        for name, options in variants.items():
            if COMBINE_KEY in options:
                try:
                    combinations[name] = parse_combination(options, f"variants.{name}", base_variants=base)
                except CombineConfigError as error:
                    raise TrafficConfigError(str(error)) from None
        glance_stats = _glance_stats(raw.get("glance_stats"), base_dir)
        reload_interval_s = _seconds(raw.get("reload_interval_s", 5.0), "reload_interval_s", allow_zero=True)
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
            extra = set(entry) - {"name", "fraction", "variant", "explore"}
            if extra:
                raise TrafficConfigError(f"{where} has unknown keys {sorted(extra)}; expected name, fraction, variant, explore")
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
            explore = None
            if "explore" in entry:
                try:
                    explore = parse_policy(entry["explore"], f"{where}.explore")
                except ExploreConfigError as error:
                    raise TrafficConfigError(str(error)) from None
                if glance_stats is None:
                    raise TrafficConfigError(f"{where}.explore needs glance statistics; set the top-level key 'glance_stats'")
            total += float(fraction)
            end = BUCKETS if index == len(raw_buckets) - 1 else int(round(total * BUCKETS))
            buckets.append(Bucket(name=name, fraction=float(fraction), variant=variant, start=start, end=end, explore=explore))
            start = end
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise TrafficConfigError(f"bucket fractions sum to {total:.6f}; they must sum to 1")
        return cls(
            variants=dict(variants),
            buckets=tuple(buckets),
            combinations=combinations,
            glance_stats=glance_stats,
            reload_interval_s=reload_interval_s,
        )


def _seconds(value: Any, key: str, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        expected = "a non-negative number" if allow_zero else "a positive number"
        raise TrafficConfigError(f"{key} must be {expected} of seconds, got {value!r}")
    return float(value)


def _glance_stats(raw: Any, base_dir: Path | None) -> GlanceStatsSource | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise TrafficConfigError(f"glance_stats must be an object with 'path', got {type(raw).__name__}")
    extra = set(raw) - {"path", "reload_interval_s"}
    if extra:
        raise TrafficConfigError(f"glance_stats has unknown keys {sorted(extra)}; expected path, reload_interval_s")
    path = raw.get("path")
    if not isinstance(path, str) or not path:
        raise TrafficConfigError(f"glance_stats.path must be a non-empty string, got {path!r}")
    resolved = Path(path)
    if not resolved.is_absolute() and base_dir is not None:
        resolved = base_dir / resolved
    interval = _seconds(raw.get("reload_interval_s", 30.0), "glance_stats.reload_interval_s", allow_zero=False)
    return GlanceStatsSource(path=resolved, reload_interval_s=interval)


# Every user on FM-Lite; the cosine baseline is declared so that a caller may ask for it.
DEFAULT_TRAFFIC = TrafficSplit.from_dict(
    {"variants": {"fmlite": {}, "cosine": {}}, "buckets": [{"name": "all", "fraction": 1.0, "variant": "fmlite"}]}
)


def load_traffic(path: str | Path | None) -> TrafficSplit:
    """Load and validate a traffic config file; None gives ``DEFAULT_TRAFFIC``."""
    if path is None:
        return DEFAULT_TRAFFIC
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TrafficConfigError(f"traffic config not found: {path}") from None
    except OSError as error:
        raise TrafficConfigError(f"traffic config {path} cannot be read: {error}") from None
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TrafficConfigError(f"traffic config {path} is not valid JSON: {error}") from None
    split = TrafficSplit.from_dict(raw, base_dir=path.resolve().parent)
    return replace(split, source=path, digest=hashlib.sha256(data).hexdigest()[:12])

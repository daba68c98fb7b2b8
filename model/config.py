"""Configuration of the offline pipeline: frozen dataclasses, importable without TensorFlow.

Defaults fit the MIND-small sample, whose log spans six days (2019-11-09 to 2019-11-14). The
history window is MIND's history column plus the first 3 logged days, training uses the next
2 days, and the last day is held out for testing. Production settings are 28 history days, 7
training days and 1 test day.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "DEFAULT_DATA_DIR",
    "WindowConfig",
    "UserEncoderConfig",
    "SamplingConfig",
    "FMLiteConfig",
    "TrainConfig",
    "PipelineConfig",
]

# The real sample as laid out beside the repository; a full MIND download is passed explicitly.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mind-small-sample"


@dataclass(frozen=True)
class WindowConfig:
    """Consecutive day windows: history (user profiles), training examples, held-out test days.

    ``start`` is the first history day (default: the first day of the log). With
    ``include_history_column`` the undated clicks logged before the first day (MIND's history
    column) join every history window, dated to the day before that window starts.
    """

    history_days: int = 3
    train_days: int = 2
    test_days: int = 1
    start: dt.date | None = None
    include_history_column: bool = True

    def __post_init__(self) -> None:
        for name in ("history_days", "train_days", "test_days"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be at least 1 day, got {value}")


@dataclass(frozen=True)
class UserEncoderConfig:
    """Switches of the user encoder; ``decay_days`` overrides ``T`` (default: the window length).

    A history click is a click logged without its impression. ``impute_history`` counts each
    one in the meta peek rates as ``1 / p`` impressions with the population's meta mix. With it
    off, history clicks feed the text and image sections only.

    ``meta_log_lift`` turns each meta peek rate into its log lift over the population's rate of
    that value, after shrinking it toward that rate by ``meta_prior_impressions``
    pseudo-impressions (see ``model.user_encoder``). With it off, the meta section holds the
    plain peek rates of the paper.
    """

    normalize: bool = True
    decay: bool = True
    decay_days: float | None = None
    impute_history: bool = True
    meta_log_lift: bool = True
    meta_prior_impressions: float = 10.0

    def __post_init__(self) -> None:
        if self.decay_days is not None and self.decay_days <= 0:
            raise ValueError(f"decay_days must be positive, got {self.decay_days}")
        if not self.meta_prior_impressions > 0:
            raise ValueError(
                f"meta_prior_impressions must be positive, got {self.meta_prior_impressions}; it counts pseudo-impressions at the population's rate (default 10)"
            )


@dataclass(frozen=True)
class SamplingConfig:
    """Training-set sampling: negatives kept per positive (None keeps all) and the validation share.

    Users go to validation when ``mmh3(user_id, seed=split_seed) mod 100 < validation_percent``.
    """

    negatives_per_positive: float | None = 2.0
    validation_percent: int = 20
    split_seed: int = 0x5B117

    def __post_init__(self) -> None:
        if self.negatives_per_positive is not None and self.negatives_per_positive <= 0:
            raise ValueError(f"negatives_per_positive must be positive or None, got {self.negatives_per_positive}")
        if not 0 <= self.validation_percent < 100:
            raise ValueError(f"validation_percent must be in [0, 100), got {self.validation_percent}")


@dataclass(frozen=True)
class FMLiteConfig:
    """Dense layer widths of each section's towers (the last width is the reduced dimension).

    ``None`` for a section means one linear layer as wide as the section's input, initialised
    to the identity: ``<a_u, a_g>`` then starts as the plain inner product ``<u, g>`` of the
    section and training learns a full bilinear form from there. The meta section defaults to
    it. Its signal is the user's peek rate for the glance's own category, subcategory and
    format, ``sum_j w_j u_MF[j] g_MF[j]``, a diagonal form of rank M (about 190 columns on
    MIND). A tower narrower than M cannot represent it.
    """

    meta_units: tuple[int, ...] | None = None
    image_units: tuple[int, ...] | None = (64, 16)
    text_units: tuple[int, ...] | None = (64, 16)
    activation: str = "relu"

    def __post_init__(self) -> None:
        for name in ("meta_units", "image_units", "text_units"):
            units = getattr(self, name)
            if units is None:
                continue
            if not units or any(width < 1 for width in units):
                raise ValueError(f"{name} must list at least one positive layer width or be None, got {units}")

@dataclass(frozen=True)
class TrainConfig:
    """Training loop: Adam with binary cross-entropy, early stopping on validation loss."""

    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 1e-3
    patience: int = 3
    deterministic: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.patience < 0:
            raise ValueError(f"patience must not be negative, got {self.patience}")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything ``model.pipeline.run_pipeline`` needs; paths are created under ``out``.

    ``seed`` drives negative sub-sampling, weight initialisation and shuffling, so two runs
    with the same seed and data produce the same model (with ``train.deterministic``).

    ``glance_scope`` picks the glances encoded and published. ``"all"`` encodes every glance
    with content. ``"logged"`` encodes only those that appear in the interactions or the
    history column, which is faster and still covers every glance a replay of the log requests.
    ``version`` defaults to the current UTC time as ``YYYYMMDDHHMMSS``.
    """

    data_dir: Path = DEFAULT_DATA_DIR
    out: Path = Path("var")
    num_shards: int = 2
    seed: int = 0
    version: int | None = None
    text_model_path: Path | None = None
    text_cache_dir: Path | None = None
    glance_scope: Literal["all", "logged"] = "all"
    progress: bool = True
    windows: WindowConfig = field(default_factory=WindowConfig)
    user_encoder: UserEncoderConfig = field(default_factory=UserEncoderConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    model: FMLiteConfig = field(default_factory=FMLiteConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(os.fspath(self.data_dir)))
        object.__setattr__(self, "out", Path(os.fspath(self.out)))
        if self.num_shards < 1:
            raise ValueError(f"num_shards must be at least 1, got {self.num_shards}")
        if self.version is not None and self.version < 1:
            raise ValueError(f"version must be a positive integer, got {self.version}")
        if self.glance_scope not in ("all", "logged"):
            raise ValueError(f"glance_scope must be 'all' or 'logged', got {self.glance_scope!r}")

    @property
    def cache_dir(self) -> Path:
        """Directory of the text-embedding cache: ``text_cache_dir`` or ``<out>/cache``."""
        return Path(self.text_cache_dir) if self.text_cache_dir is not None else self.out / "cache"

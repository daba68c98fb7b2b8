"""Hidden click model of the simulator: the ground truth that a ranker tries to recover.

For user ``u`` and glance ``g`` (category ``c``, subcategory ``s``, format ``f``, topic weights
``theta_g`` summing to 1, publication quality ``q_g``):

    logit p(peek | u, g) = base + bias_c + C[u, c] + S[u, s] + F[u, f] + <T[u], theta_g> + b_u + q_g

``base`` and ``bias_c`` are calibrated so that the click rate and the category mix of clicks
match the real sample; ``C``, ``S``, ``F`` and ``T`` are the user's hidden preferences over
categories, subcategories, formats and text topics (Gaussian, one row per user); ``b_u`` is the
user's overall propensity to peek and ``q_g`` the glance's appeal to everyone. Each term's
standard deviation over random (user, glance) pairs is set by ``PreferenceScales``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["PreferenceScales", "GlanceAttributes", "HiddenPreferences", "sample_preferences", "TRUTH_FILE"]

logger = logging.getLogger(__name__)

TRUTH_FILE = "truth.npz"
# Pairs per block when logits are computed for many pairs, to bound the temporary memory.
_BLOCK = 1 << 20


@dataclass(frozen=True)
class PreferenceScales:
    """Standard deviation, in logits, of each term of the click model over random pairs."""

    category: float = 1.0
    subcategory: float = 0.6
    topic: float = 1.0
    format: float = 0.3
    user: float = 0.5
    glance: float = 0.3

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 0:
                raise ValueError(f"preference scale {name} must not be negative, got {value}")


@dataclass(frozen=True)
class GlanceAttributes:
    """Integer codes of every published glance: category, subcategory, format, topic weights."""

    category: np.ndarray
    subcategory: np.ndarray
    format: np.ndarray
    topics: np.ndarray


@dataclass(frozen=True)
class HiddenPreferences:
    """Parameters of the click model; row ``u`` of a user matrix belongs to user number ``u``."""

    base: float
    category_bias: np.ndarray
    user_category: np.ndarray
    user_subcategory: np.ndarray
    user_format: np.ndarray
    user_topic: np.ndarray
    user_bias: np.ndarray
    glance_quality: np.ndarray
    glances: GlanceAttributes

    def with_calibration(self, *, base: float, category_bias: np.ndarray) -> "HiddenPreferences":
        """Return a copy with a new intercept and per-category biases."""
        values = dict(self.__dict__)
        values.update(base=float(base), category_bias=np.asarray(category_bias, dtype=np.float64))
        return HiddenPreferences(**values)

    def logits(self, users: np.ndarray, glances: np.ndarray) -> np.ndarray:
        """Return the float64 click logits of the pairs ``(users[i], glances[i])``."""
        users = np.asarray(users, dtype=np.int64)
        glances = np.asarray(glances, dtype=np.int64)
        if users.shape != glances.shape:
            raise ValueError(f"users and glances differ in shape: {users.shape} vs {glances.shape}")
        result = np.empty(users.shape, dtype=np.float64)
        flat_users = users.reshape(-1)
        flat_glances = glances.reshape(-1)
        flat = result.reshape(-1)
        attributes = self.glances
        for start in range(0, len(flat_users), _BLOCK):
            u = flat_users[start : start + _BLOCK]
            g = flat_glances[start : start + _BLOCK]
            category = attributes.category[g]
            topic = np.einsum("ij,ij->i", self.user_topic[u], attributes.topics[g])
            flat[start : start + _BLOCK] = (
                self.base
                + self.category_bias[category]
                + self.user_category[u, category]
                + self.user_subcategory[u, attributes.subcategory[g]]
                + self.user_format[u, attributes.format[g]]
                + topic
                + self.user_bias[u]
                + self.glance_quality[g]
            )
        return result

    def probabilities(self, users: np.ndarray, glances: np.ndarray) -> np.ndarray:
        """Return the true peek probabilities of the pairs."""
        return 1.0 / (1.0 + np.exp(-self.logits(users, glances)))

    def save(self, path: Path, *, user_ids: np.ndarray, glance_ids: np.ndarray) -> None:
        """Write every parameter and the id of each user and glance row to an ``.npz`` file."""
        np.savez_compressed(
            path,
            base=np.float64(self.base),
            category_bias=self.category_bias,
            user_category=self.user_category,
            user_subcategory=self.user_subcategory,
            user_format=self.user_format,
            user_topic=self.user_topic,
            user_bias=self.user_bias,
            glance_quality=self.glance_quality,
            glance_category=self.glances.category,
            glance_subcategory=self.glances.subcategory,
            glance_format=self.glances.format,
            glance_topics=self.glances.topics,
            user_ids=np.asarray(user_ids, dtype=str),
            glance_ids=np.asarray(glance_ids, dtype=str),
        )

    @classmethod
    def load(cls, path: Path) -> tuple["HiddenPreferences", np.ndarray, np.ndarray]:
        """Read a file written by ``save``; return the preferences, user ids and glance ids."""
        with np.load(path, allow_pickle=False) as archive:
            glances = GlanceAttributes(
                category=archive["glance_category"],
                subcategory=archive["glance_subcategory"],
                format=archive["glance_format"],
                topics=archive["glance_topics"],
            )
            truth = cls(
                base=float(archive["base"]),
                category_bias=archive["category_bias"],
                user_category=archive["user_category"],
                user_subcategory=archive["user_subcategory"],
                user_format=archive["user_format"],
                user_topic=archive["user_topic"],
                user_bias=archive["user_bias"],
                glance_quality=archive["glance_quality"],
                glances=glances,
            )
            return truth, archive["user_ids"], archive["glance_ids"]


def sample_preferences(
    rng: np.random.Generator,
    *,
    users: int,
    glances: GlanceAttributes,
    categories: int,
    subcategories: int,
    formats: int,
    scales: PreferenceScales,
) -> HiddenPreferences:
    """Draw every user's hidden preferences and every glance's appeal; intercepts start at 0."""
    topics = glances.topics.shape[1]
    user_topic = rng.standard_normal((users, topics))
    # Scale the topic term so that <T[u], theta_g> has standard deviation ``scales.topic`` over
    # random pairs; with theta summing to 1 its raw spread depends on how peaked the topics are.
    probe_users = rng.integers(0, users, 20_000)
    probe_glances = rng.integers(0, len(glances.category), 20_000)
    raw = np.einsum("ij,ij->i", user_topic[probe_users], glances.topics[probe_glances])
    spread = float(raw.std()) or 1.0
    user_topic *= scales.topic / spread
    return HiddenPreferences(
        base=0.0,
        category_bias=np.zeros(categories, dtype=np.float64),
        user_category=(rng.standard_normal((users, categories)) * scales.category).astype(np.float32),
        user_subcategory=(rng.standard_normal((users, subcategories)) * scales.subcategory).astype(np.float32),
        user_format=(rng.standard_normal((users, formats)) * scales.format).astype(np.float32),
        user_topic=user_topic.astype(np.float32),
        user_bias=rng.standard_normal(users) * scales.user,
        glance_quality=rng.standard_normal(len(glances.category)) * scales.glance,
        glances=glances,
    )

"""Real glance content for the simulator: news rows of two MIND id spaces, renumbered, with text topics.

MIND numbers news separately per release, so rows of the MIND-small sample and of the MINDdemo
news file can never be joined by id. The simulator only uses their content: both files are
read with their own ids, rows whose (title, abstract) repeat are dropped, and the rest get
fresh ids in one space.

Text topics are a hidden feature of the simulator, kept apart from the model's sentence
encoder: a TF-IDF matrix of ``title + " " + abstract`` (English stop words removed) is
factorised by non-negative matrix factorisation, and each row's topic weights are scaled to
sum to 1 (a row without any vocabulary term gets equal weights).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from model.mind import DOC_TYPE_FILE, NEWS_FILES, read_doc_types, read_news
from model.tables import GlanceTable

__all__ = ["ContentError", "ContentPool", "load_content_pool", "text_topics"]

logger = logging.getLogger(__name__)


class ContentError(ValueError):
    """A content source is missing or contains no usable news rows."""


@dataclass(frozen=True)
class ContentPool:
    """Distinct real news rows: content columns of ``model.tables.GlanceTable`` plus the source name."""

    frame: pd.DataFrame

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def categories(self) -> np.ndarray:
        return self.frame["category"].to_numpy(dtype=object)

    def texts(self) -> list[str]:
        """Return ``title + " " + abstract`` of each row, stripped, as the glance encoder builds it."""
        return [f"{title} {abstract}".strip() for title, abstract in zip(self.frame["title"], self.frame["abstract"])]


def _read_source(directory: Path) -> GlanceTable:
    news = [directory / name for name in NEWS_FILES if (directory / name).is_file()]
    if not news:
        raise ContentError(f"no news file ({' or '.join(NEWS_FILES)}) in {directory}")
    doc_path = directory / DOC_TYPE_FILE
    doc_types = read_doc_types(doc_path) if doc_path.is_file() else {}
    return read_news(news, doc_types=doc_types)


def load_content_pool(directories: list[Path] | tuple[Path, ...]) -> ContentPool:
    """Read the news rows of each MIND directory (each its own id space) and keep distinct texts.

    The original ids are dropped; the first occurrence of a (title, abstract) pair wins, in
    the order the directories are given.
    """
    if not directories:
        raise ContentError("at least one content directory is required")
    frames = []
    for directory in directories:
        table = _read_source(Path(directory))
        frame = table.frame.drop(columns=["glance_id"]).copy()
        frame["source"] = Path(directory).name
        frames.append(frame)
        logger.info("content source %s: %d news rows", directory, len(frame))
    pool = pd.concat(frames, ignore_index=True)
    duplicated = pool.duplicated(["title", "abstract"], keep="first")
    pool = pool.loc[~duplicated].reset_index(drop=True)
    if len(pool) == 0:
        raise ContentError(f"the content directories {list(map(str, directories))} contain no news rows")
    logger.info("content pool: %d distinct rows (%d repeated texts dropped)", len(pool), int(duplicated.sum()))
    return ContentPool(pool)


def text_topics(texts: list[str], *, topics: int, seed: int) -> np.ndarray:
    """Return a ``[len(texts), topics]`` float64 matrix of topic weights, each row summing to 1."""
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_extraction.text import TfidfVectorizer

    if topics < 2:
        raise ValueError(f"topics must be at least 2, got {topics}")
    vectorizer = TfidfVectorizer(stop_words="english", min_df=2, max_features=5000, sublinear_tf=True)
    matrix = vectorizer.fit_transform(texts)
    if matrix.shape[1] < topics:
        raise ContentError(f"the texts have {matrix.shape[1]} terms in at least two documents, fewer than {topics} topics")
    factoriser = NMF(n_components=topics, init="nndsvda", random_state=seed, max_iter=200, tol=1e-3)
    with warnings.catch_warnings():
        # The topics only need to be a fixed, seeded grouping of the texts, not a converged
        # factorisation, so hitting the iteration limit is fine.
        warnings.simplefilter("ignore", ConvergenceWarning)
        weights = factoriser.fit_transform(matrix)
    totals = weights.sum(axis=1, keepdims=True)
    uniform = np.full_like(weights, 1.0 / topics)
    return np.where(totals > 0, weights / np.maximum(totals, 1e-12), uniform)

"""Reader of the MIND news-recommendation dataset into the shared tables of ``model.tables``.

A MIND directory holds:

- ``behaviors.tsv``: ``impression_id \\t user_id \\t time \\t history \\t impressions`` with time
  as ``M/D/YYYY h:mm:ss AM``, history as space-separated clicked news ids and impressions as
  ``N123-1 N456-0`` (news id, dash, 1 clicked or 0 not clicked);
- ``news.tsv`` and optionally ``news-extra.tsv``: ``id, category, subcategory, title, abstract,
  url, title_entities, abstract_entities``, tab-separated, no header;
- optionally ``doc_type.json``: ``{"AAGH0ET": "ar" | "vi" | "ss"}`` keyed by the URL key.

A full MIND download has no ``news-extra.tsv`` or ``doc_type.json``, so both are optional. A
glance whose format is known neither from ``doc_type.json`` nor from an ``ar-``/``vi-``/``ss-``
URL prefix gets a missing format. MIND has no images, so ``image_caption`` is always missing.
Every malformed row raises ``MindFormatError`` naming the file, the 1-based line and the field.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from model.tables import GlanceTable, HistoryTable, InteractionTable, SourceData

__all__ = [
    "BEHAVIORS_FILE",
    "NEWS_FILES",
    "DOC_TYPE_FILE",
    "FORMATS",
    "TIME_FORMAT",
    "MindFormatError",
    "read_mind",
    "read_behaviors",
    "read_news",
    "read_doc_types",
    "url_key",
]

logger = logging.getLogger(__name__)

BEHAVIORS_FILE = "behaviors.tsv"
NEWS_FILES = ("news.tsv", "news-extra.tsv")
DOC_TYPE_FILE = "doc_type.json"
# Content formats of MIND: article, video, slideshow.
FORMATS = ("ar", "vi", "ss")
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"

BEHAVIOR_FIELDS = ("impression_id", "user_id", "time", "history", "impressions")
NEWS_FIELDS = ("news_id", "category", "subcategory", "title", "abstract", "url", "title_entities", "abstract_entities")

# Last URL path segment: an optional format prefix ("ss-"), the key, then ".html" or a query.
_URL_KEY = re.compile(r"^(?:(?P<prefix>ar|vi|ss)-)?(?P<key>[A-Za-z0-9]+)(?:\.html?)?$")
_IMPRESSION = re.compile(r"^(?P<glance>\S+)-(?P<label>[01])$")


class MindFormatError(ValueError):
    """A MIND file is missing or has a malformed row; ``path``, ``line`` and ``field`` locate it."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, field: str, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: field {field!r}: {message}")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line of ``path``, decoded as UTF-8, without the newline.

    A single empty line at the end of the file is ignored. Any other empty line is yielded, so
    the caller rejects it as a row with too few fields.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError as error:
        raise MindFormatError(path, None, "file", "file not found") from error
    rows = raw.split(b"\n")
    if rows and rows[-1] == b"":
        rows.pop()
    for number, row in enumerate(rows, start=1):
        try:
            text = row.decode("utf-8")
        except UnicodeDecodeError as error:
            raise MindFormatError(path, number, "line", f"invalid UTF-8 at byte {error.start}") from error
        yield number, text.removesuffix("\r")


def _split(path: Path, number: int, text: str, fields: tuple[str, ...]) -> list[str]:
    values = text.split("\t")
    if len(values) != len(fields):
        raise MindFormatError(path, number, "columns", f"expected {len(fields)} tab-separated fields {list(fields)}, found {len(values)}")
    return values


def url_key(url: str) -> tuple[str | None, str | None]:
    """Return ``(key, format_prefix)`` of a MIND URL, or ``(None, None)`` when it has no key.

    ``https://assets.msn.com/labs/mind/AAGH0ET.html`` gives ``("AAGH0ET", None)`` and
    ``https://www.msn.com/en-us/news/ss-AAGH0ET?ocid=xyz`` gives ``("AAGH0ET", "ss")``.
    """
    path = url.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    segment = path.rsplit("/", 1)[-1]
    match = _URL_KEY.match(segment)
    if not match:
        return None, None
    return match.group("key"), match.group("prefix")


def read_doc_types(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read ``doc_type.json``: a JSON object mapping URL keys to ``ar``, ``vi`` or ``ss``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise MindFormatError(path, None, "file", "file not found") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        line = getattr(error, "lineno", None)
        raise MindFormatError(path, line, "json", f"invalid JSON: {error}") from error
    if not isinstance(raw, dict):
        raise MindFormatError(path, None, "json", f"expected a JSON object keyed by URL key, found {type(raw).__name__}")
    for key, value in raw.items():
        if value not in FORMATS:
            raise MindFormatError(path, None, key, f"format {value!r} is not one of {list(FORMATS)}")
    return dict(raw)


def read_news(paths: list[Path] | tuple[Path, ...], *, doc_types: dict[str, str] | None = None) -> GlanceTable:
    """Read one or more news files into a glance table, rejecting a news id that appears twice."""
    doc_types = doc_types or {}
    columns: dict[str, list[str | None]] = {name: [] for name in ("glance_id", "category", "subcategory", "format", "title", "abstract")}
    seen: dict[str, tuple[Path, int]] = {}
    for path in paths:
        for number, text in _lines(path):
            news_id, category, subcategory, title, abstract, url, _, _ = _split(path, number, text, NEWS_FIELDS)
            for field, value in (("news_id", news_id), ("category", category), ("subcategory", subcategory)):
                if not value.strip():
                    raise MindFormatError(path, number, field, "must not be empty")
            if news_id in seen:
                first_path, first_line = seen[news_id]
                raise MindFormatError(path, number, "news_id", f"duplicate news id {news_id!r}, first seen at {first_path}:{first_line}")
            seen[news_id] = (path, number)
            key, prefix = url_key(url)
            columns["glance_id"].append(news_id)
            columns["category"].append(category)
            columns["subcategory"].append(subcategory)
            columns["format"].append(doc_types.get(key, prefix) if key else None)
            columns["title"].append(title)
            columns["abstract"].append(abstract)
    frame = pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})
    frame["image_caption"] = pd.Series([None] * len(frame), dtype=object)
    return GlanceTable(frame)


def read_behaviors(path: str | os.PathLike[str]) -> tuple[InteractionTable, HistoryTable]:
    """Read ``behaviors.tsv`` into one interaction per impressed news id, plus the history clicks.

    MIND repeats a user's history (clicks before the logged period) on each of the user's rows;
    the history table keeps the history of the user's earliest row, once per user.
    """
    path = Path(path)
    line_numbers: list[int] = []
    impression_ids: list[int] = []
    users: list[str] = []
    times: list[str] = []
    histories: list[str] = []
    counts: list[int] = []
    glance_ids: list[str] = []
    labels: list[int] = []
    first_line_of_impression: dict[int, int] = {}

    for number, text in _lines(path):
        impression_text, user_id, time_text, history, impressions = _split(path, number, text, BEHAVIOR_FIELDS)
        try:
            impression_id = int(impression_text)
        except ValueError as error:
            raise MindFormatError(path, number, "impression_id", f"expected an integer, found {impression_text!r}") from error
        if impression_id in first_line_of_impression:
            raise MindFormatError(
                path, number, "impression_id",
                f"duplicate impression id {impression_id}, first seen on line {first_line_of_impression[impression_id]}",
            )
        first_line_of_impression[impression_id] = number
        if not user_id.strip() or user_id != user_id.strip():
            raise MindFormatError(path, number, "user_id", f"must be a non-empty id without surrounding spaces, found {user_id!r}")
        tokens = impressions.split()
        if not tokens:
            raise MindFormatError(path, number, "impressions", "must list at least one 'newsid-label' pair")
        for token in tokens:
            match = _IMPRESSION.match(token)
            if not match:
                raise MindFormatError(path, number, "impressions", f"expected 'newsid-0' or 'newsid-1', found {token!r}")
            glance_ids.append(match.group("glance"))
            labels.append(int(match.group("label")))
        line_numbers.append(number)
        impression_ids.append(impression_id)
        users.append(user_id)
        times.append(time_text)
        histories.append(history)
        counts.append(len(tokens))

    timestamps = pd.to_datetime(pd.Series(times, dtype=object), format=TIME_FORMAT, errors="coerce")
    invalid = np.flatnonzero(timestamps.isna().to_numpy())
    if len(invalid):
        row = int(invalid[0])
        raise MindFormatError(path, line_numbers[row], "time", f"expected M/D/YYYY h:mm:ss AM, found {times[row]!r}")

    repeat = np.asarray(counts, dtype=np.int64)
    interactions = pd.DataFrame(
        {
            "impression_id": np.repeat(np.asarray(impression_ids, dtype=np.int64), repeat),
            "user_id": pd.Series(np.repeat(np.asarray(users, dtype=object), repeat), dtype=object),
            "glance_id": pd.Series(glance_ids, dtype=object),
            "timestamp": np.repeat(timestamps.to_numpy(dtype="datetime64[ns]"), repeat),
            "peek": np.asarray(labels, dtype=np.int8),
        }
    )
    return InteractionTable(interactions), _history_table(users, timestamps.to_numpy(), histories)


def _history_table(users: list[str], timestamps: np.ndarray, histories: list[str]) -> HistoryTable:
    rows = pd.DataFrame({"user_id": pd.Series(users, dtype=object), "timestamp": timestamps, "history": pd.Series(histories, dtype=object)})
    rows = rows.sort_values(["user_id", "timestamp"], kind="stable")
    differing = int((rows.groupby("user_id", sort=False)["history"].nunique() > 1).sum())
    if differing:
        logger.warning("%d users have a different history on different rows; using each user's earliest row", differing)
    first = rows.drop_duplicates("user_id", keep="first")
    user_column: list[str] = []
    glance_column: list[str] = []
    for user_id, history in zip(first["user_id"], first["history"]):
        clicks = history.split()
        user_column.extend([user_id] * len(clicks))
        glance_column.extend(clicks)
    return HistoryTable(pd.DataFrame({"user_id": pd.Series(user_column, dtype=object), "glance_id": pd.Series(glance_column, dtype=object)}))


def read_mind(directory: str | os.PathLike[str]) -> SourceData:
    """Read a MIND directory (``behaviors.tsv``, ``news.tsv``, optional extras) into source tables."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MindFormatError(directory, None, "directory", "MIND data directory not found")
    doc_path = directory / DOC_TYPE_FILE
    doc_types = read_doc_types(doc_path) if doc_path.exists() else {}
    news_paths = [directory / name for name in NEWS_FILES if (directory / name).exists()]
    if not news_paths:
        raise MindFormatError(directory / NEWS_FILES[0], None, "file", "file not found")
    glances = read_news(news_paths, doc_types=doc_types)
    interactions, history = read_behaviors(directory / BEHAVIORS_FILE)
    logger.info(
        "read MIND data from %s: %d glances, %d interactions (%d peeks), %d history clicks",
        directory, len(glances), len(interactions), int(interactions.frame["peek"].sum()), len(history),
    )
    return SourceData(glances=glances, interactions=interactions, history=history)

"""Native Parquet layout of glance content and interaction logs, read into ``model.tables``.

A dataset directory contains three files (the profile jobs at scale write the same columns):

- ``glances.parquet``: ``glance_id`` string, ``category`` string, ``subcategory`` string,
  ``format`` string or null, ``title`` string, ``abstract`` string, ``image_caption`` string or
  null, and optionally ``image_path`` (string or null, relative to the directory) for glances
  whose image has not been captioned yet;
- ``interactions.parquet``: ``impression_id`` int64, ``user_id`` string, ``glance_id`` string,
  ``timestamp`` timestamp, ``peek`` int (0 or 1), and optionally ``duration_s`` (seconds spent,
  read and ignored by the current models);
- ``history.parquet`` (optional): ``user_id`` string, ``glance_id`` string: clicks before the
  first logged day, without a time.

Unlike MIND, a glance here can carry an image caption; the glance encoder turns it into the
image embedding. Captions missing for glances that have an ``image_path`` can be produced by
``model.captions`` before encoding.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from model.tables import GLANCE_COLUMNS, HISTORY_COLUMNS, GlanceTable, HistoryTable, InteractionTable, SourceData, TableSchemaError

__all__ = ["PARQUET_FILES", "IMAGE_PATH_COLUMN", "ParquetFormatError", "read_parquet_dataset", "read_glance_frame", "write_parquet_dataset"]

logger = logging.getLogger(__name__)

PARQUET_FILES = {"glances": "glances.parquet", "interactions": "interactions.parquet", "history": "history.parquet"}
IMAGE_PATH_COLUMN = "image_path"


class ParquetFormatError(ValueError):
    """A Parquet file of the dataset is missing, unreadable or does not follow the schema."""


def _read(path: Path) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ParquetFormatError(f"{path}: file not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise ParquetFormatError(f"{path}: not a readable Parquet file: {error}") from error
    return table.to_pandas()


def read_glance_frame(directory: str | os.PathLike[str]) -> pd.DataFrame:
    """Return ``glances.parquet`` as a frame: the glance columns plus ``image_path`` when present."""
    path = Path(directory) / PARQUET_FILES["glances"]
    frame = _read(path)
    missing = [column for column in GLANCE_COLUMNS if column not in frame.columns]
    if missing:
        raise ParquetFormatError(f"{path}: missing columns {missing}; required columns are {list(GLANCE_COLUMNS)}")
    columns = list(GLANCE_COLUMNS) + ([IMAGE_PATH_COLUMN] if IMAGE_PATH_COLUMN in frame.columns else [])
    return frame.loc[:, columns]


def read_parquet_dataset(directory: str | os.PathLike[str], *, captioner_dir: str | os.PathLike[str] | None = None) -> SourceData:
    """Read a Parquet dataset directory into source tables.

    Glances with an ``image_path`` and no caption are captioned with the model in
    ``captioner_dir`` (see ``model.captions``). Without one they keep no caption, and a warning
    gives the number of images left without one.
    """
    from model.captions import fill_captions

    directory = Path(directory)
    glance_frame = read_glance_frame(directory)
    glance_frame, report = fill_captions(glance_frame, image_root=directory, model_dir=captioner_dir)
    if report.uncaptioned:
        logger.warning("%s", report.describe())
    try:
        glances = GlanceTable(glance_frame.drop(columns=[IMAGE_PATH_COLUMN], errors="ignore"))
        interactions_path = directory / PARQUET_FILES["interactions"]
        interactions_frame = _read(interactions_path)
        if "timestamp" in interactions_frame and isinstance(interactions_frame["timestamp"].dtype, pd.DatetimeTZDtype):
            # The tables hold naive times in the log's clock; drop the zone, keep the wall time.
            interactions_frame["timestamp"] = interactions_frame["timestamp"].dt.tz_localize(None)
        interactions = InteractionTable(interactions_frame)
        history_path = directory / PARQUET_FILES["history"]
        history = HistoryTable(_read(history_path)) if history_path.is_file() else HistoryTable.empty()
    except TableSchemaError as error:
        raise ParquetFormatError(f"{directory}: {error}") from error
    logger.info(
        "read Parquet data from %s: %d glances (%d with a caption), %d interactions, %d history clicks",
        directory, len(glances), int(glances.frame["image_caption"].notna().sum()), len(interactions), len(history),
    )
    return SourceData(glances=glances, interactions=interactions, history=history)


def write_parquet_dataset(
    source: SourceData,
    directory: str | os.PathLike[str],
    *,
    image_paths: dict[str, str] | None = None,
) -> Path:
    """Write ``source`` in the native layout; ``image_paths`` maps glance ids to image files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    glances = source.glances.frame.copy()
    if image_paths:
        glances[IMAGE_PATH_COLUMN] = glances["glance_id"].map(image_paths).astype(object)
        glances[IMAGE_PATH_COLUMN] = glances[IMAGE_PATH_COLUMN].where(glances[IMAGE_PATH_COLUMN].notna(), None)
    schema = pa.schema([(column, pa.string()) for column in glances.columns])
    pq.write_table(pa.Table.from_pandas(glances, schema=schema, preserve_index=False), directory / PARQUET_FILES["glances"])
    interactions = source.interactions.frame
    pq.write_table(pa.Table.from_pandas(interactions, preserve_index=False), directory / PARQUET_FILES["interactions"])
    if len(source.history):
        pq.write_table(pa.Table.from_pandas(source.history.frame.loc[:, list(HISTORY_COLUMNS)], preserve_index=False), directory / PARQUET_FILES["history"])
    logger.info("wrote Parquet dataset to %s: %d glances, %d interactions", directory, len(glances), len(interactions))
    return directory

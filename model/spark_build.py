"""PySpark engine of the profile and training-set build: the same outputs as the single-machine build.

The job reads the interaction log and the history clicks as Parquet (the native layout of
``model.parquet``) and computes:

- user profiles over a window: events on glances with content are grouped into
  ``buckets`` hash buckets of user ids, and each bucket is encoded by
  ``model.user_encoder.build_user_profiles`` in a pandas UDF (``applyInPandas``). A user's
  profile depends only on the user's own events, and the UDF restores the log order of the
  events before encoding, so the values are those of the single-machine build;
- the training set: impressions of the training window on glances with content, the
  train/validation split by ``mmh3(user_id, split_seed) mod 100`` and the negative sub-sampling
  of ``model.dataset.build_training_set``. Negatives of a split are numbered in log order
  (a distributed sort and ``zipWithIndex``), the driver draws the kept ordinals with the same
  NumPy generator ``default_rng([seed, split])`` the single-machine build uses, and a join keeps
  those rows.

Glance features are encoded on the driver (``model.glance_encoder``) and broadcast: live glances
are few, users and impressions are many. The driver collects the profiles and the sampled
examples, which the snapshot writer and the trainer need in memory.
NOTE: the driver therefore keeps every user of the snapshot in memory (about 3.7 KB per user with
384-wide embeddings). A build of hundreds of millions of users needs a per-shard snapshot writer.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model.config import PipelineConfig
from model.dataset import ExampleSet, TrainingSet, Windows
from model.glance_encoder import GlanceFeatures
from model.user_encoder import EVENT_COLUMNS, LOGGED_COLUMN, HistoryExposure, UserProfiles, build_user_profiles

__all__ = ["DEFAULT_MASTER", "SparkBuildError", "spark_session", "build_with_spark"]

logger = logging.getLogger(__name__)

DEFAULT_MASTER = "local[2]"
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


class SparkBuildError(RuntimeError):
    """The Spark job could not start or produced inconsistent results."""


def spark_session(master: str = DEFAULT_MASTER, *, shuffle_partitions: int = 4, app_name: str = "fmlite-build-profiles") -> Any:
    """Return a SparkSession for ``master`` whose Python workers run this interpreter and import this project."""
    from pyspark.sql import SparkSession

    # Python workers inherit the driver's environment in local mode. On a cluster the project
    # must be installed on the executors, for example with --py-files or in the image.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    paths = [str(_PROJECT_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
    )
    try:
        session = builder.getOrCreate()
    except Exception as error:  # py4j and the JVM launcher raise several types
        raise SparkBuildError(f"starting Spark with master {master!r} failed (is Java 17 or 21 installed?): {error}") from error
    session.sparkContext.setLogLevel("WARN")
    return session


def _day_column(origin: dt.date) -> Any:
    from pyspark.sql import functions as F

    return F.datediff(F.to_date(F.col("timestamp")), F.lit(origin.isoformat()).cast("date"))


def _events(interactions: Any, history: Any, windows: Windows, days: tuple[int, int], glance_ids: Any) -> Any:
    """Return the encoder's events of ``days`` (plus the history clicks) on glances with content."""
    from pyspark.sql import functions as F

    # (source, row) restores the single-machine order: history clicks first, then the log.
    logged = (
        interactions.where((F.col("day") >= days[0]) & (F.col("day") <= days[1]))
        .select("user_id", "glance_id", "day", "peek", F.lit(1).alias("source"), "row")
    )
    if windows.history_column_day is not None and history is not None:
        clicks = history.select(
            "user_id", "glance_id", F.lit(days[0] - 1).cast("long").alias("day"), F.lit(1).cast("int").alias("peek"),
            F.lit(0).alias("source"), "row",
        )
        logged = clicks.unionByName(logged)
    return logged.join(F.broadcast(glance_ids), "glance_id", "inner")


def _exposure(events: Any, glances: GlanceFeatures) -> HistoryExposure | None:
    """Return the window's logged peek rate and meta mix, computed once over every partition."""
    from pyspark.sql import functions as F

    counts = (
        events.where(F.col("source") == 1)
        .groupBy("glance_id")
        .agg(F.count(F.lit(1)).alias("impressions"), F.sum("peek").alias("peeks"))
        .toPandas()
    )
    rows = pd.Index(glances.ids).get_indexer(pd.Index(counts["glance_id"].to_numpy(dtype=object)))
    impressions = np.zeros(len(glances))
    peeks = np.zeros(len(glances))
    impressions[rows] = counts["impressions"].to_numpy(dtype=np.float64)
    peeks[rows] = counts["peeks"].to_numpy(dtype=np.float64)
    return HistoryExposure.from_counts(impressions, peeks, glances)


def _profiles(
    events: Any,
    glances: GlanceFeatures,
    *,
    present_day: int,
    window_days: float,
    config: PipelineConfig,
    buckets: int,
) -> UserProfiles:
    """Encode every user of ``events`` in hash buckets and collect the profiles to the driver."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as S

    session = events.sparkSession
    exposure = _exposure(events, glances)
    shared = session.sparkContext.broadcast(glances)
    encoder = config.user_encoder
    schema = S.StructType(
        [
            S.StructField("user_id", S.StringType()),
            S.StructField("meta", S.ArrayType(S.FloatType())),
            S.StructField("image", S.ArrayType(S.FloatType())),
            S.StructField("text", S.ArrayType(S.FloatType())),
            S.StructField("peeks", S.LongType()),
            S.StructField("impressions", S.LongType()),
        ]
    )

    def encode(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.sort_values(["source", "row"], kind="stable")
        # source 1 is a logged impression, 0 a history click without its impression.
        frame[LOGGED_COLUMN] = frame["source"].to_numpy() == 1
        profiles = build_user_profiles(
            frame.loc[:, [*EVENT_COLUMNS, LOGGED_COLUMN]],
            shared.value,
            present_day=present_day,
            window_days=window_days,
            config=encoder,
            exposure=exposure,
        )
        return pd.DataFrame(
            {
                "user_id": profiles.ids,
                "meta": list(profiles.meta),
                "image": list(profiles.image),
                "text": list(profiles.text),
                "peeks": profiles.peeks,
                "impressions": profiles.impressions,
            }
        )

    encoded = events.withColumn("bucket", F.pmod(F.xxhash64("user_id"), F.lit(buckets))).groupBy("bucket").applyInPandas(encode, schema)
    frame = encoded.toPandas()
    shared.unpersist()
    order = np.argsort(frame["user_id"].to_numpy(dtype=str), kind="stable")
    frame = frame.iloc[order].reset_index(drop=True)
    ids = frame["user_id"].to_numpy(dtype=str)

    def matrix(column: str, width: int) -> np.ndarray:
        if not len(frame):
            return np.zeros((0, width), np.float32)
        return np.stack([np.asarray(value, np.float32) for value in frame[column]])

    meta = matrix("meta", glances.meta.shape[1])
    image = matrix("image", glances.image.shape[1])
    text = matrix("text", glances.text.shape[1])
    if len(ids):
        cold_start = {"meta": meta.mean(axis=0), "image": image.mean(axis=0), "text": text.mean(axis=0)}
    else:
        cold_start = {"meta": np.zeros(meta.shape[1], np.float32), "image": np.zeros(image.shape[1], np.float32), "text": np.zeros(text.shape[1], np.float32)}
    decay_days = encoder.decay_days if encoder.decay_days is not None else window_days
    return UserProfiles(
        ids=ids,
        meta=meta,
        image=image,
        text=text,
        peeks=frame["peeks"].to_numpy(np.int64),
        impressions=frame["impressions"].to_numpy(np.int64),
        cold_start={section: np.asarray(vector, np.float32) for section, vector in cold_start.items()},
        present_day=int(present_day),
        window_days=float(decay_days),
        options={"normalize": encoder.normalize, "decay": encoder.decay, "decay_days": float(decay_days)},
    )


def _kept_negative_ordinals(count: int, positives: int, ratio: float | None, seed: int, stream: int) -> np.ndarray | None:
    """Return the ordinals of the kept negatives, drawn as ``model.dataset`` draws them; None keeps all."""
    if ratio is None:
        return None
    keep = min(count, int(round(ratio * positives)))
    if keep == 0:
        return np.zeros(0, np.int64)
    return np.random.default_rng([seed, stream]).choice(count, size=keep, replace=False).astype(np.int64)


def _training_set(
    interactions: Any, windows: Windows, glance_ids: Any, glances: GlanceFeatures, users: UserProfiles, config: PipelineConfig
) -> TrainingSet:
    from pyspark.sql import functions as F
    from pyspark.sql import types as S

    sampling = config.sampling
    window = interactions.where((F.col("day") >= windows.train[0]) & (F.col("day") <= windows.train[1]))
    split_seed, percent = sampling.split_seed, sampling.validation_percent

    @F.pandas_udf(S.BooleanType())
    def in_validation(user_ids: pd.Series) -> pd.Series:
        from fmlite.sharding import user_hash

        return user_ids.map(lambda user_id: user_hash(user_id, seed=split_seed) % 100 < percent)

    marked = glance_ids.withColumn("content", F.lit(True))
    window = (
        window.join(F.broadcast(marked), "glance_id", "left")
        .withColumn("content", F.coalesce(F.col("content"), F.lit(False)))
        .withColumn("validation", in_validation("user_id"))
        .select("row", "user_id", "glance_id", "peek", "content", "validation")
        .cache()
    )
    # One pass counts impressions by (content, split, label); every count below comes from it.
    tally = {(r["content"], r["validation"], int(r["peek"])): int(r["count"]) for r in window.groupBy("content", "validation", "peek").count().collect()}

    def total(content: bool | None = None, validation: bool | None = None, peek: int | None = None) -> int:
        return sum(
            count for (c, v, p), count in tally.items()
            if (content is None or c == content) and (validation is None or v == validation) and (peek is None or p == peek)
        )

    examples = window.where(F.col("content"))
    session = interactions.sparkSession

    splits: dict[str, ExampleSet] = {}
    counts: dict[str, Any] = {
        "window": {
            "impressions": total(),
            "peeks": total(peek=1),
            "impressions_with_content": total(content=True),
            "peeks_with_content": total(content=True, peek=1),
        },
        "sampling": asdict(sampling),
    }
    for stream, name in enumerate(("train", "validation")):
        part = examples.where(F.col("validation") == (name == "validation"))
        positives = part.where(F.col("peek") == 1)
        negatives = part.where(F.col("peek") == 0)
        positive_count = total(content=True, validation=name == "validation", peek=1)
        negative_count = total(content=True, validation=name == "validation", peek=0)
        negative_rows = negatives.select("row").orderBy("row")
        ordinals = _kept_negative_ordinals(negative_count, positive_count, sampling.negatives_per_positive, config.seed, stream)
        if ordinals is None:
            kept = part
        else:
            numbered = session.createDataFrame(negative_rows.rdd.zipWithIndex().map(lambda pair: (pair[0][0], pair[1])), ["row", "ordinal"])
            chosen = session.createDataFrame(pd.DataFrame({"ordinal": ordinals}))
            kept_rows = numbered.join(chosen, "ordinal", "inner").select("row")
            kept = positives.unionByName(negatives.join(kept_rows, "row", "inner"))
        frame = kept.select("row", "user_id", "glance_id", "peek").toPandas().sort_values("row", kind="stable")
        user_ids = frame["user_id"].to_numpy(dtype=object).astype(str)
        glance_ids_kept = frame["glance_id"].to_numpy(dtype=object).astype(str)
        glance_rows = pd.Index(glances.ids).get_indexer(pd.Index(glance_ids_kept))
        splits[name] = ExampleSet(
            user_ids=user_ids,
            glance_ids=glance_ids_kept,
            user_rows=users.rows_of(user_ids).astype(np.int64),
            glance_rows=glance_rows.astype(np.int64),
            labels=frame["peek"].to_numpy().astype(np.float32),
        )
        counts[name] = splits[name].counts()
        counts[name]["negatives_before_sampling"] = int(negative_count)
    window.unpersist()
    logger.info(
        "Spark training set: %d train examples (%d positive), %d validation examples (%d positive)",
        len(splits["train"]), splits["train"].positives, len(splits["validation"]), splits["validation"].positives,
    )
    return TrainingSet(train=splits["train"], validation=splits["validation"], counts=counts)


def _read_log(session: Any, parquet_dir: Path, windows: Windows) -> tuple[Any, Any]:
    """Return the interactions (with ``row`` in file order and ``day``) and the history clicks (with ``row``)."""
    from pyspark.sql import functions as F

    # monotonically_increasing_id grows with the file position inside and across input splits,
    # which is the order the single-machine reader sees the rows in.
    interactions = (
        session.read.parquet(str(parquet_dir / "interactions.parquet"))
        .withColumn("row", F.monotonically_increasing_id())
        .withColumn("day", _day_column(windows.origin).cast("long"))
        .withColumn("peek", F.col("peek").cast("int"))
        .select("row", "user_id", "glance_id", "day", "peek")
    )
    history_path = parquet_dir / "history.parquet"
    history = None
    if history_path.is_file():
        history = session.read.parquet(str(history_path)).withColumn("row", F.monotonically_increasing_id()).select("row", "user_id", "glance_id")
    return interactions, history


def build_with_spark(
    parquet_dir: str | os.PathLike[str],
    windows: Windows,
    glances: GlanceFeatures,
    *,
    config: PipelineConfig,
    master: str = DEFAULT_MASTER,
    buckets: int = 8,
    session: Any = None,
) -> tuple[UserProfiles, UserProfiles, TrainingSet]:
    """Run the Spark job over the Parquet log in ``parquet_dir``; return (training profiles, serving profiles, training set)."""
    own_session = session is None
    session = session or spark_session(master)
    try:
        interactions, history = _read_log(session, Path(parquet_dir), windows)
        interactions = interactions.cache()
        glance_ids = session.createDataFrame(pd.DataFrame({"glance_id": glances.ids.astype(str)}))
        history_length = windows.history[1] - windows.history[0] + 1
        training_profiles = _profiles(
            _events(interactions, history, windows, windows.history, glance_ids),
            glances, present_day=windows.history[1], window_days=history_length, config=config, buckets=buckets,
        )
        serving_profiles = _profiles(
            _events(interactions, history, windows, windows.serving_history, glance_ids),
            glances, present_day=windows.serving_history[1], window_days=history_length, config=config, buckets=buckets,
        )
        training = _training_set(interactions, windows, glance_ids, glances, training_profiles, config)
        interactions.unpersist()
    finally:
        if own_session:
            session.stop()
    logger.info("Spark build: %d training profiles, %d serving profiles", len(training_profiles), len(serving_profiles))
    return training_profiles, serving_profiles, training

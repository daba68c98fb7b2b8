"""The PySpark build against the single-machine build on the real sample, field by field."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fmlite import snapshot
from model.config import PipelineConfig
from model.profile_build import build_profiles, read_training_output

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def builds(tmp_path_factory, sample_dir, text_cache_dir):
    from model.spark_build import spark_session

    out = tmp_path_factory.mktemp("builds")

    def config(version: int) -> PipelineConfig:
        return PipelineConfig(
            data_dir=sample_dir, out=out, version=version, text_cache_dir=text_cache_dir, glance_scope="logged", progress=False, seed=7,
        )

    local = build_profiles(config(1), engine="local", publish=False)
    session = spark_session("local[2]", shuffle_partitions=2)
    try:
        spark = build_profiles(config(2), engine="spark", spark_session=session, publish=False)
    finally:
        session.stop()
    return local, spark


def test_manifests_agree(builds):
    local, spark = builds
    a, b = snapshot.read_manifest(local.snapshot_dir), snapshot.read_manifest(spark.snapshot_dir)
    assert a.num_shards == b.num_shards == 2
    assert a.meta_columns == b.meta_columns
    assert a.embedding_dim == b.embedding_dim
    assert a.counts == b.counts
    assert a.fallback_score == b.fallback_score
    for section in ("meta", "image", "text"):
        np.testing.assert_array_equal(a.cold_start[section], b.cold_start[section])
    assert a.info["windows"] == b.info["windows"]
    assert (a.info["engine"], b.info["engine"]) == ("local", "spark")


def test_glance_and_user_tables_agree(builds):
    local, spark = builds
    a, b = snapshot.read_manifest(local.snapshot_dir), snapshot.read_manifest(spark.snapshot_dir)
    glances_a, glances_b = snapshot.load_glances(local.snapshot_dir, a), snapshot.load_glances(spark.snapshot_dir, b)
    for field in ("ids", "meta", "image", "text"):
        np.testing.assert_array_equal(getattr(glances_a, field), getattr(glances_b, field))
    users = 0
    for shard in range(a.num_shards):
        users_a, users_b = snapshot.load_users(local.snapshot_dir, shard, a), snapshot.load_users(spark.snapshot_dir, shard, b)
        for field in ("ids", "meta", "image", "text"):
            np.testing.assert_array_equal(getattr(users_a, field), getattr(users_b, field), err_msg=f"shard {shard} field {field}")
        for field in ("peeks", "impressions"):
            np.testing.assert_array_equal(users_a.extra[field], users_b.extra[field], err_msg=f"shard {shard} field {field}")
        users += len(users_a)
    assert users == local.users == spark.users > 1000


def test_training_sets_agree(builds):
    local, spark = builds
    examples_a, profiles_a, counts_a = read_training_output(local.training_dir)
    examples_b, profiles_b, counts_b = read_training_output(spark.training_dir)
    assert len(examples_a) > 100
    pd.testing.assert_frame_equal(examples_a, examples_b)
    assert counts_a == counts_b
    assert set(profiles_a) == set(profiles_b)
    for key in profiles_a:
        np.testing.assert_array_equal(profiles_a[key], profiles_b[key], err_msg=key)


def test_unknown_engine_rejected(tmp_path, sample_dir):
    with pytest.raises(ValueError, match="unknown engine 'dask'"):
        build_profiles(PipelineConfig(data_dir=sample_dir, out=Path(tmp_path)), engine="dask")

"""The NumPy fast path against the SavedModel on the real sample: scores within 1e-5, and its speed."""

import time

import numpy as np
import pytest

from leaf.model_files import ModelLoadError
from leaf.numpy_runner import NumPyRunner, load_fmlite_weights
from leaf.profiles import load_profile_cache
from leaf.savedmodel_runner import SavedModelRunner
from leaf_models import check_inputs, copy_version

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def runners(real_model):
    profiles = {shard: load_profile_cache(real_model.profiles_root, shard=shard, num_shards=2) for shard in (0, 1)}
    savedmodel = SavedModelRunner("fmlite", real_model.base, version=real_model.version)
    numpy_runner = NumPyRunner("fmlite", real_model.base, version=real_model.version)
    return profiles, savedmodel, numpy_runner


def test_scores_match_savedmodel_on_real_sample(runners):
    profiles, savedmodel, numpy_runner = runners
    rng = np.random.default_rng(3)
    worst = 0.0
    checked = 0
    for shard, cache in profiles.items():
        bound = numpy_runner.bind(cache)
        user_ids = cache.users.table.ids.tolist()
        chosen = [user_ids[i] for i in rng.choice(len(user_ids), 40, replace=False)]
        users = [cache.users.lookup(user_id) for user_id in chosen] + [cache.cold_start]
        for user in users:
            rows = rng.integers(0, len(cache.glances), 100)
            expected = savedmodel.score(user, cache, rows)
            actual = bound.score(user, cache, rows)
            worst = max(worst, float(np.max(np.abs(actual - expected))))
            checked += len(rows)
    assert checked == 2 * 41 * 100
    assert worst <= TOLERANCE, f"NumPy scores differ from the SavedModel's by {worst:.3g}"


def test_pairwise_inputs_match_savedmodel(runners, real_model):
    _, savedmodel, numpy_runner = runners
    inputs = check_inputs(real_model.manifest, real_model.profiles_root, rows=300, seed=5)
    np.testing.assert_allclose(numpy_runner.predict_arrays(inputs), savedmodel.predict_arrays(inputs), rtol=0, atol=TOLERANCE)


def test_every_glance_of_the_table_scored(runners):
    profiles, savedmodel, numpy_runner = runners
    cache = profiles[0]
    bound = numpy_runner.bind(cache)
    rows = np.arange(len(cache.glances))
    np.testing.assert_allclose(bound.score(cache.cold_start, cache, rows), savedmodel.score(cache.cold_start, cache, rows), atol=TOLERANCE)


def test_unbound_runner_refuses_to_score(runners):
    profiles, _, numpy_runner = runners
    with pytest.raises(RuntimeError, match="call bind"):
        numpy_runner.score(profiles[0].cold_start, profiles[0], np.arange(3))
    bound = numpy_runner.bind(profiles[0])
    with pytest.raises(RuntimeError, match="bound to profiles"):
        bound.score(profiles[1].cold_start, profiles[1], np.arange(3))


def test_model_without_layout_rejected(real_model, tmp_path):
    copy = copy_version(real_model.path, tmp_path, 1)
    (copy / "assets.extra" / "fmlite_model.json").unlink()
    with pytest.raises(ModelLoadError, match="layer layout"):
        load_fmlite_weights(copy)


def test_unknown_activation_rejected(real_model, tmp_path):
    import json

    copy = copy_version(real_model.path, tmp_path, 1)
    metadata_file = copy / "assets.extra" / "fmlite_model.json"
    metadata = json.loads(metadata_file.read_text())
    metadata["config"]["activation"] = "mish"
    metadata_file.write_text(json.dumps(metadata))
    with pytest.raises(ModelLoadError, match="activation 'mish' is not supported"):
        load_fmlite_weights(copy)


def test_numpy_scoring_step_faster_than_savedmodel(runners, record_property):
    """Time the scoring step of both runners on the same 100-glance chunk (the leaf's FM-Lite chunk)."""
    profiles, savedmodel, numpy_runner = runners
    cache = profiles[0]
    bound = numpy_runner.bind(cache)
    user = cache.users.lookup(cache.users.table.ids[0])
    rows = np.arange(100) % len(cache.glances)

    def per_call(runner, calls=200):
        for _ in range(20):
            runner.score(user, cache, rows)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(calls):
                runner.score(user, cache, rows)
            best = min(best, (time.perf_counter() - started) / calls)
        return best

    savedmodel_s = per_call(savedmodel)
    numpy_s = per_call(bound)
    ratio = savedmodel_s / numpy_s
    record_property("savedmodel_us_per_chunk", round(savedmodel_s * 1e6, 1))
    record_property("numpy_us_per_chunk", round(numpy_s * 1e6, 1))
    print(f"scoring step, 100 glances: SavedModel {savedmodel_s * 1e6:.0f} us, NumPy {numpy_s * 1e6:.0f} us, ratio {ratio:.1f}")
    assert ratio > 2.0


@pytest.mark.parametrize(
    ("meta_units", "sparse"),
    [(None, True), ((32, 16), False)],
    ids=["one linear meta layer: sparse meta columns", "two meta layers: dense reduced vectors"],
)
def test_both_meta_paths_match_savedmodel(real_model, tmp_path, meta_units, sparse):
    from model.config import FMLiteConfig

    from leaf_models import export_random_model

    export_random_model(real_model, tmp_path, 7, seed=11, config=FMLiteConfig(meta_units=meta_units), every_weight=True)
    base = tmp_path / "fmlite"
    cache = load_profile_cache(real_model.profiles_root, shard=0, num_shards=2)
    bound = NumPyRunner("fmlite", base, version=7).bind(cache)
    assert (bound._meta_columns is not None) is sparse
    if sparse:
        # Glance meta rows are one-hot values: a few columns each, not the ~170 of the input.
        assert bound._meta_columns.shape[1] <= 0.25 * cache.glances.meta.shape[1]
        assert bound._glance_matrix.shape[1] == 2 * 16
    savedmodel = SavedModelRunner("fmlite", base, version=7)
    rng = np.random.default_rng(8)
    user_ids = cache.users.table.ids.tolist()
    for user in [cache.users.lookup(user_ids[i]) for i in rng.choice(len(user_ids), 10, replace=False)] + [cache.cold_start]:
        rows = rng.integers(0, len(cache.glances), 150)
        # Twice: the second call reads the cached user side.
        for _ in range(2):
            np.testing.assert_allclose(bound.score(user, cache, rows), savedmodel.score(user, cache, rows), rtol=0, atol=TOLERANCE)

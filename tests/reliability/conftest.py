"""Fixtures of the reliability tests: real leaf processes on the session's trained artifacts.

Leaves load TensorFlow and the SavedModel (about 10 s each on 2 cores), so every leaf the tests
need is started once per session, all at the same time. Two stay healthy (``a``, ``b``), one is
killed, one gets SIGTERM, and one serves a snapshot with NaN and inf rows. Controllers and fault
servers start in about a second and are started per test.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fmlite import snapshot
from fmlite.sharding import shard_of
from load_driver import RequestTemplate
from reliability_figures import FigureBook, render_markdown
from reliability_setup import (
    GLANCES_PER_REQUEST, NUM_SHARDS, SHARD, Front, Leaves, PoisonedSnapshot, Profiles, call, l1_arguments, start_l0,
)
from rpc.idl import fmlite_thrift as T
from server_processes import ProcessGroup, ServerProc
from store_platform import RedisOnPort, StorePlatform, export_random_model, publish_to_redis, write_scaled_profiles


@pytest.fixture(scope="session")
def figure_book(tmp_path_factory: pytest.TempPathFactory):
    book = FigureBook()
    yield book
    if not book.records:
        return
    path = Path(os.environ.get("FMLITE_RELIABILITY_FIGURES") or tmp_path_factory.getbasetemp() / "reliability-figures.json")
    book.write(path)
    print(f"\nreliability figures written to {path}")
    doc = os.environ.get("FMLITE_RELIABILITY_DOC")
    if doc:
        Path(doc).write_text(render_markdown(json.loads(path.read_text())))
        print(f"reliability report written to {doc}")


@pytest.fixture(scope="session")
def procs(tmp_path_factory: pytest.TempPathFactory):
    group = ProcessGroup(tmp_path_factory.mktemp("reliability-servers"))
    yield group
    group.stop_all()


@pytest.fixture(scope="session")
def profiles(trained_artifacts) -> Profiles:
    root = trained_artifacts.out_dir / "profiles"
    directory = root / str(snapshot.current_version(root))
    manifest = snapshot.read_manifest(directory)
    return Profiles(root, directory, manifest, snapshot.load_glances(directory, manifest), snapshot.load_users(directory, SHARD, manifest))


@pytest.fixture(scope="session")
def poisoned_snapshot(profiles: Profiles, tmp_path_factory: pytest.TempPathFactory) -> PoisonedSnapshot:
    manifest = profiles.manifest
    glances = snapshot.load_glances(profiles.directory, manifest)
    shards = [snapshot.load_users(profiles.directory, shard, manifest) for shard in range(manifest.num_shards)]
    glance_arrays = {"ids": glances.ids, "meta": glances.meta.copy(), "image": glances.image.copy(), "text": glances.text.copy()}
    user_arrays = {
        "ids": np.concatenate([table.ids for table in shards]),
        **{section: np.concatenate([getattr(table, section) for table in shards]) for section in snapshot.SECTIONS},
        **{key: np.concatenate([table.extra[key] for table in shards]) for key in shards[0].extra},
    }
    # One NaN, one inf and one -inf glance; two users of the served shard with NaN and inf.
    glance_arrays["text"][0, 0] = np.nan
    glance_arrays["image"][1, 3] = np.inf
    glance_arrays["meta"][2, 0] = -np.inf
    shard_rows = [row for row, uid in enumerate(user_arrays["ids"].tolist()) if shard_of(str(uid), NUM_SHARDS) == SHARD][:2]
    user_arrays["text"][shard_rows[0], 5] = np.nan
    user_arrays["image"][shard_rows[1], 0] = np.inf
    root = tmp_path_factory.mktemp("poisoned-profiles")
    version = manifest.version + 1
    snapshot.write_snapshot(
        root,
        version=version,
        num_shards=manifest.num_shards,
        meta_columns=manifest.meta_columns,
        glances=glance_arrays,
        users=user_arrays,
        cold_start=manifest.cold_start,
        fallback_score=manifest.fallback_score,
    )
    snapshot.publish_version(root, version)
    return PoisonedSnapshot(
        root,
        tuple(str(g) for g in glances.ids[:3].tolist()),
        tuple(str(user_arrays["ids"][row]) for row in shard_rows),
    )


@pytest.fixture(scope="session")
def leaves(trained_artifacts, procs: ProcessGroup, poisoned_snapshot: PoisonedSnapshot) -> Leaves:
    var = trained_artifacts.out_dir

    def leaf(role: str, profiles_root: Path) -> ServerProc:
        return procs.fmlite(
            role, "serve-leaf", "--shard", str(SHARD), "--num-shards", str(NUM_SHARDS),
            "--profiles", str(profiles_root), "--model", f"fmlite={var / 'models' / 'fmlite'}",
        )

    started = Leaves(
        a=leaf("leaf-a", var / "profiles"),
        b=leaf("leaf-b", var / "profiles"),
        doomed=leaf("leaf-doomed", var / "profiles"),
        draining=leaf("leaf-draining", var / "profiles"),
        poisoned=leaf("leaf-poisoned", poisoned_snapshot.root),
    )
    procs.wait_ready([started.a, started.b, started.doomed, started.draining, started.poisoned], timeout_s=300)
    return started


@pytest.fixture(scope="session")
def templates(profiles: Profiles, leaves: Leaves) -> list[RequestTemplate]:
    """24 requests of shard-0 users (20 known, 4 cold start) with 250 glance ids and their scores."""
    rng = np.random.default_rng(5)
    glance_ids = [str(g) for g in profiles.glances.ids.tolist()]
    users = [str(u) for u in profiles.users.ids[:20].tolist()]
    users += [uid for uid in (f"new-user-{i}" for i in range(40)) if shard_of(uid, NUM_SHARDS) == SHARD][:4]
    result = []
    for user_id in users:
        ids = tuple(glance_ids[i] for i in rng.integers(0, len(glance_ids), GLANCES_PER_REQUEST))
        response = call(leaves.a.address, T.PredictRequest(user_id=user_id, glance_ids=list(ids), variant="fmlite", timeout_ms=5000))
        result.append(RequestTemplate(user_id, ids, tuple(response.scores)))
    return result


@pytest.fixture(scope="session")
def spare_l1(procs: ProcessGroup, leaves: Leaves) -> ServerProc:
    """An L1 of shard 1 so that L0 starts; the tests send only shard-0 users."""
    server = procs.fmlite(
        "l1-spare", "serve-l1", "--shard", "1", "--num-shards", str(NUM_SHARDS), "--leaves", leaves.a.address, "--health-interval-s", "0",
    )
    procs.wait_ready([server])
    return server


@pytest.fixture(scope="session")
def front(procs: ProcessGroup, leaves: Leaves, spare_l1: ServerProc) -> Front:
    # Long chunk calls: a request of 10,000 ids queues 50 chunk calls at each leaf.
    l1 = procs.fmlite("l1-front", *l1_arguments([leaves.a.address, leaves.b.address], "--chunk-timeout-ms", "5000"))
    procs.wait_ready([l1])
    l0 = start_l0(procs, "l0-front", [l1.address], spare_l1.address)
    procs.wait_ready([l0])
    return Front(l0, l1)


# Configured Redis timeouts of the store leaves, in milliseconds.
REDIS_TIMEOUT_MS = 100


@pytest.fixture(scope="session")
def store_platform(trained_artifacts, profiles: Profiles, procs: ProcessGroup, tmp_path_factory: pytest.TempPathFactory) -> StorePlatform:
    """Redis with the session snapshot published, two hot-reloading leaves reading it, and an L1."""
    root = tmp_path_factory.mktemp("store-platform")
    source_base = trained_artifacts.out_dir / "models" / "fmlite"
    old_model = max(int(p.name) for p in source_base.iterdir() if p.name.isdigit())
    models = root / "models" / "fmlite"
    models.mkdir(parents=True)
    shutil.copytree(source_base / str(old_model), models / str(old_model))
    profiles_root = root / "profiles"
    profiles_root.mkdir()
    shutil.copytree(profiles.directory, profiles_root / profiles.directory.name)
    snapshot.publish_version(profiles_root, profiles.manifest.version)
    new_model, new_profiles = old_model + 1, profiles.manifest.version + 1
    staged_model = export_random_model(profiles, models / str(old_model), root / "staging", new_model)
    write_scaled_profiles(profiles, profiles_root, new_profiles)

    redis = RedisOnPort(root / "redis")
    publish_to_redis(redis.url, profiles_root, version=profiles.manifest.version)
    leaves = [
        procs.fmlite(
            f"leaf-store-{i}", "serve-leaf", "--shard", str(SHARD), "--num-shards", str(NUM_SHARDS),
            "--redis-url", redis.url, "--model", f"fmlite={models}", "--reload-interval-s", "0.5",
            "--redis-timeout-ms", str(REDIS_TIMEOUT_MS), "--redis-connect-timeout-ms", str(REDIS_TIMEOUT_MS),
        )
        for i in range(2)
    ]
    procs.wait_ready(leaves, timeout_s=300)
    l1 = procs.fmlite("l1-store", *l1_arguments([leaf.address for leaf in leaves]))
    procs.wait_ready([l1])
    platform = StorePlatform(
        redis=redis, leaves=leaves, l1=l1, models=models, profiles_root=profiles_root, staged_model=staged_model,
        old_model=str(old_model), new_model=str(new_model), old_profiles=str(profiles.manifest.version),
        new_profiles=str(new_profiles), workdir=root,
    )
    yield platform
    redis.stop()

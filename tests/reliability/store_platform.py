"""Leaves that read a Redis profile store and hot-reload, with the versions the tests publish under load.

The Redis server keeps its port across restarts, so the leaves can find it again after an outage.
The leaves read a private copy of the model base directory, so a test can publish a new model
version there. The new model (random weights) and the new profile version (text embeddings
times 1.1) are written before the load starts and only published during it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fmlite import snapshot
from fmlite.redis_server import RedisServer, redis_server_binary
from fmlite.signature import OUTPUT_NAME
from load_driver import RequestTemplate
from reliability_setup import SHARD, Profiles
from server_processes import ServerProc

__all__ = ["RedisOnPort", "StorePlatform", "export_random_model", "write_scaled_profiles", "expected_scores", "publish_to_redis"]


class RedisOnPort:
    """A ``redis-server`` that can be stopped and started again on the port it first got."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        first = RedisServer(workdir=workdir).start()
        self.port = first.port
        self.process: subprocess.Popen = first.process

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def signal_stop(self) -> None:
        """Send SIGTERM without waiting, so a load generator's event loop is not held up."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.signal_stop()
        self.process.wait(timeout=10)

    def start_again(self) -> None:
        """Start an empty server on the same port (the data is not persisted)."""
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )


def publish_to_redis(url: str, profiles_root: Path, *, version: int, attempts: int = 50) -> None:
    """Publish snapshot ``version`` to Redis as the pipeline does, retrying while the server starts."""
    import redis

    from model.publish import connect, publish_snapshot

    for attempt in range(attempts):
        try:
            client = connect(url, connect_timeout_s=1.0, socket_timeout_s=30.0)
            try:
                publish_snapshot(profiles_root / str(version), client=client)
            finally:
                client.close()
            return
        except redis.exceptions.ConnectionError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)


def export_random_model(profiles: Profiles, trained_model: Path, staging_root: Path, version: int) -> Path:
    """Export FM-Lite with random (seeded) weights as ``<staging_root>/fmlite/<version>``."""
    import keras

    from model.config import FMLiteConfig
    from model.export import METADATA_FILE, export_savedmodel
    from model.fmlite_model import build_fmlite

    keras.utils.set_random_seed(version % 2**31)
    manifest = profiles.manifest
    model = build_fmlite(meta_dim=manifest.meta_dim, embedding_dim=manifest.embedding_dim, config=FMLiteConfig())
    trained = json.loads((trained_model / METADATA_FILE).read_text())
    rows = np.arange(16)
    check_inputs = {f"user_{s}": getattr(profiles.users, s)[rows] for s in snapshot.SECTIONS}
    check_inputs.update({f"glance_{s}": getattr(profiles.glances, s)[rows] for s in snapshot.SECTIONS})
    metadata = {key: trained[key] for key in ("meta_columns", "embedding_dim", "config") if key in trained}
    return export_savedmodel(model, models_root=staging_root, version=version, check_inputs=check_inputs, metadata=metadata)


def write_scaled_profiles(profiles: Profiles, root: Path, version: int) -> None:
    """Write snapshot ``version`` under ``root`` without publishing it: the session's with text embeddings times 1.1."""
    manifest = profiles.manifest
    glances = snapshot.load_glances(profiles.directory, manifest)
    shards = [snapshot.load_users(profiles.directory, shard, manifest) for shard in range(manifest.num_shards)]

    def scaled(tables: list[snapshot.FeatureTable]) -> dict[str, np.ndarray]:
        arrays = {
            "ids": np.concatenate([t.ids for t in tables]),
            "meta": np.concatenate([t.meta for t in tables]),
            "image": np.concatenate([t.image for t in tables]),
            "text": np.concatenate([t.text for t in tables]) * np.float32(1.1),
        }
        arrays.update({key: np.concatenate([t.extra[key] for t in tables]) for key in tables[0].extra})
        return arrays

    snapshot.write_snapshot(
        root, version=version, num_shards=manifest.num_shards, meta_columns=manifest.meta_columns,
        glances=scaled([glances]), users=scaled(shards), cold_start=manifest.cold_start, fallback_score=manifest.fallback_score,
    )


def expected_scores(model_dir: Path, profile_dir: Path, templates: list[RequestTemplate]) -> dict[str, np.ndarray]:
    """Score every template with one SavedModel on one snapshot version, with TensorFlow in this process."""
    import tensorflow as tf

    manifest = snapshot.read_manifest(profile_dir)
    glances = snapshot.load_glances(profile_dir, manifest)
    users = snapshot.load_users(profile_dir, SHARD, manifest)
    glance_index, user_index = glances.index(), users.index()
    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    result = {}
    for template in templates:
        rows = np.array([glance_index[g] for g in template.glance_ids])
        row = user_index.get(template.user_id)
        user = {s: (getattr(users, s)[row] if row is not None else manifest.cold_start[s]) for s in snapshot.SECTIONS}
        inputs = {f"user_{s}": tf.constant(np.tile(user[s], (len(rows), 1)).astype(np.float32)) for s in snapshot.SECTIONS}
        inputs.update({f"glance_{s}": tf.constant(getattr(glances, s)[rows]) for s in snapshot.SECTIONS})
        result[template.user_id] = np.asarray(serve(**inputs)[OUTPUT_NAME]).reshape(-1)
    return result


@dataclass
class StorePlatform:
    """Two hot-reloading leaves over Redis, an L1 over them, and the versions staged for publishing."""

    redis: RedisOnPort
    leaves: list[ServerProc]
    l1: ServerProc
    models: Path
    profiles_root: Path
    staged_model: Path
    old_model: str
    new_model: str
    old_profiles: str
    new_profiles: str
    workdir: Path
    extra: dict = field(default_factory=dict)

"""Seeded profile snapshots and a silent TCP server for the profile store tests."""

from __future__ import annotations

import socket
import threading

import numpy as np

from fmlite import snapshot

META = ["category=a", "category=b", "format=ar", "has_image"]
DIM = 8


def make_snapshot(root, *, version=1, num_shards=2, users=60, glances=40, fill=None, poison_user=None, meta=META, publish=True, seed=0):
    """Write snapshot ``version`` under ``root``; ``fill`` sets every feature to one value (to tell versions apart)."""
    rng = np.random.default_rng(seed + version)
    glance_ids = [f"N{i}" for i in range(glances)]
    user_ids = [f"U{i}" for i in range(users)]

    def table(ids):
        arrays = {
            "ids": np.array(ids),
            "meta": rng.random((len(ids), len(meta))).astype(np.float32),
            "image": rng.normal(size=(len(ids), DIM)).astype(np.float32),
            "text": rng.normal(size=(len(ids), DIM)).astype(np.float32),
        }
        if fill is not None:
            for section in ("meta", "image", "text"):
                arrays[section][:] = fill
        return arrays

    glance_table, user_table = table(glance_ids), table(user_ids)
    user_table["peeks"] = np.ones(len(user_ids))
    user_table["impressions"] = np.full(len(user_ids), 10.0)
    if poison_user is not None:
        user_table["text"][poison_user, 0] = np.nan
    cold = {"meta": np.full(len(meta), 0.1, np.float32), "image": np.zeros(DIM, np.float32), "text": np.zeros(DIM, np.float32)}
    directory = snapshot.write_snapshot(
        root, version=version, num_shards=num_shards, meta_columns=meta, glances=glance_table, users=user_table,
        cold_start=cold, fallback_score=0.04,
    )
    if publish:
        snapshot.publish_version(root, version)
    return directory, user_ids, glance_ids


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte; counts the connections."""

    def __init__(self):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.socket.settimeout(0.1)
        self.port = self.socket.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self):
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except OSError:
                continue
            self.accepted.append(connection)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        for connection in self.accepted:
            connection.close()
        self.socket.close()

"""Bounded in-memory cache of user profile rows, least recently used evicted first.

A leaf that reads profiles from Redis keeps its shard's hot users here: rows live in one float32
matrix of ``capacity`` rows at most, and an ordered map from user id to row slot keeps the
recency order. Lookups from the event loop and refills from the reload thread may overlap, so
every operation takes one lock, and ``get`` returns copies because a slot can be reused as soon
as the lock is released.

Memory per cached user: ``4 * (meta_dim + 2 * embedding_dim)`` bytes of row plus about
``ENTRY_OVERHEAD_BYTES`` for the id string, its map entry and allocator slack. With the MIND
sample's layout (145 meta columns, 384-wide embeddings) that is 3,652 + 560 bytes, about 3.9 GiB
per million users. ``docs/limits.md`` has the measurement behind the overhead.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterable, Sequence

import numpy as np

__all__ = ["ENTRY_OVERHEAD_BYTES", "UserCache", "estimated_bytes_per_user"]

# Measured with CPython 3.11 (loadtest.profile_capacity, 500,092 users loaded from Redis): resident
# bytes per user minus the row bytes. Ids are 10-character strings there; longer ids cost more.
ENTRY_OVERHEAD_BYTES = 560


def estimated_bytes_per_user(meta_dim: int, embedding_dim: int) -> int:
    """Return the estimated resident bytes of one cached user (row plus map entry)."""
    return 4 * (meta_dim + 2 * embedding_dim) + ENTRY_OVERHEAD_BYTES


class UserCache:
    """User rows ``meta | image | text`` of one profile version, at most ``capacity`` of them.

    ``complete`` is True when the cache contains every user of its shard in that version, so a
    miss means the user has no profile and the store need not be called.
    """

    def __init__(self, *, capacity: int, meta_dim: int, embedding_dim: int, initial_rows: int = 1024):
        if capacity < 1:
            raise ValueError(f"user cache capacity must be at least 1, got {capacity}")
        self.capacity = int(capacity)
        self.meta_dim = int(meta_dim)
        self.embedding_dim = int(embedding_dim)
        self.width = self.meta_dim + 2 * self.embedding_dim
        self.complete = False
        self._rows = np.zeros((min(max(initial_rows, 1), self.capacity), self.width), dtype=np.float32)
        self._slots: OrderedDict[str, int] = OrderedDict()
        self._free: list[int] = []
        self._lock = threading.Lock()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._slots

    @property
    def nbytes(self) -> int:
        """Bytes of the row matrix (allocated rows, used or not)."""
        return int(self._rows.nbytes)

    def get(self, user_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Return copies of (meta, image, text) of ``user_id`` and mark it recently used, or None."""
        with self._lock:
            slot = self._slots.get(user_id)
            if slot is None:
                return None
            self._slots.move_to_end(user_id)
            row = self._rows[slot].copy()
        meta_end = self.meta_dim
        image_end = meta_end + self.embedding_dim
        return row[:meta_end], row[meta_end:image_end], row[image_end:]

    def _slot_for(self, user_id: str) -> int:
        slot = self._slots.get(user_id)
        if slot is not None:
            self._slots.move_to_end(user_id)
            return slot
        if self._free:
            slot = self._free.pop()
        elif len(self._slots) < len(self._rows):
            slot = len(self._slots)
        elif len(self._rows) < self.capacity:
            grown = min(self.capacity, 2 * len(self._rows))
            rows = np.zeros((grown, self.width), dtype=np.float32)
            rows[: len(self._rows)] = self._rows
            slot = len(self._rows)
            self._rows = rows
        else:
            _, slot = self._slots.popitem(last=False)
            self.evictions += 1
        self._slots[user_id] = slot
        return slot

    def put(self, user_id: str, row: np.ndarray) -> None:
        """Insert or replace one user's row and mark it most recently used."""
        self.put_many([user_id], np.asarray(row, np.float32).reshape(1, -1))

    def put_many(self, user_ids: Sequence[str], rows: np.ndarray) -> None:
        """Insert rows in order; when over capacity the least recently used users are evicted."""
        rows = np.asarray(rows, dtype=np.float32)
        if rows.shape != (len(user_ids), self.width):
            raise ValueError(f"rows have shape {rows.shape}, expected ({len(user_ids)}, {self.width})")
        with self._lock:
            for user_id, row in zip(user_ids, rows):
                # The slot first: finding it may grow (replace) the row matrix.
                slot = self._slot_for(user_id)
                self._rows[slot] = row

    def discard(self, user_id: str) -> None:
        with self._lock:
            slot = self._slots.pop(user_id, None)
            if slot is not None:
                self._free.append(slot)

    def ids_by_recency(self, limit: int | None = None) -> list[str]:
        """Return cached user ids, most recently used first."""
        with self._lock:
            ids = list(reversed(self._slots.keys()))
        return ids if limit is None else ids[:limit]

    @classmethod
    def from_rows(
        cls, user_ids: Iterable[str], rows: np.ndarray, *, capacity: int, meta_dim: int, embedding_dim: int, complete: bool
    ) -> "UserCache":
        """Build a cache holding ``rows`` (``rows[i]`` of ``user_ids[i]``); later ids count as more recent.

        ``rows`` becomes the cache's row matrix without a copy when it is float32, C-contiguous
        and has at most ``capacity`` rows. The caller must not change it afterwards.
        """
        ids = list(user_ids)
        cache = cls(capacity=capacity, meta_dim=meta_dim, embedding_dim=embedding_dim, initial_rows=1)
        if len(set(ids)) != len(ids) or len(ids) > capacity:
            cache._rows = np.zeros((max(1, min(len(ids), capacity)), cache.width), np.float32)
            cache.put_many(ids, rows)
        else:
            matrix = np.asarray(rows)
            if matrix.shape != (len(ids), cache.width):
                raise ValueError(f"rows have shape {matrix.shape}, expected ({len(ids)}, {cache.width})")
            if matrix.dtype != np.float32 or not matrix.flags.c_contiguous:
                matrix = np.ascontiguousarray(matrix, dtype=np.float32)
            cache._rows = matrix if len(ids) else np.zeros((1, cache.width), np.float32)
            cache._slots = OrderedDict(zip(ids, range(len(ids))))
        cache.complete = complete and len(ids) <= capacity
        return cache

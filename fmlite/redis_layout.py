"""Redis key layout of the profile store, shared by the publisher (``model.publish``) and the leaves.

Every key starts with a prefix (default ``fmlite:profiles``) so that several platforms or tests
can share one Redis server. For prefix ``P`` and snapshot version ``V``:

| key | type | content |
|---|---|---|
| ``P:current`` | string | the published version, in decimal |
| ``P:versions`` | sorted set | every complete version, scored by its number |
| ``P:v{V}:manifest`` | string | JSON manifest, written last: its presence marks ``V`` complete |
| ``P:v{V}:glances:{part}`` | string | ``.npz`` bytes of glance rows ``[part * rows, (part + 1) * rows)`` |
| ``P:v{V}:users:{shard}`` | hash | user id -> row bytes of the users of ``shard`` |

A user row is float32, little-endian, the sections concatenated as ``meta | image | text``
(``4 * (meta_dim + 2 * embedding_dim)`` bytes). Users are partitioned with
``fmlite.sharding.shard_of``, the hash the router uses. A version's keys never change after its
manifest is written, and ``P:current`` moves only to a complete version, so a reader that reads
the pointer and then only the keys of that version never sees half a snapshot.

NOTE: the pointer switch is a Lua script over ``P:current``, ``P:versions`` and the manifest key.
On Redis Cluster those keys would have to share a hash slot (for example a prefix of the form
``{fmlite}:profiles``), which this layout does not enforce.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from fmlite.snapshot import FORMAT_VERSION, SECTIONS, Manifest, SnapshotError

__all__ = [
    "DEFAULT_PREFIX",
    "LAYOUT_VERSION",
    "GLANCE_PART_ROWS",
    "StoreLayoutError",
    "KeyLayout",
    "RowCodec",
    "encode_glance_part",
    "decode_glance_part",
    "manifest_from_json",
]

DEFAULT_PREFIX = "fmlite:profiles"
# Version of this key layout, stored in every manifest; a reader rejects other values.
LAYOUT_VERSION = 1
# Glance rows per ``glances:{part}`` value: 2,048 rows of 913 float32 columns are about 7.5 MB,
# well under Redis's 512 MB string limit and small enough to stream without blocking Redis long.
GLANCE_PART_ROWS = 2048


class StoreLayoutError(SnapshotError):
    """A value in the profile store does not follow this layout (wrong size, version or fields)."""


@dataclass(frozen=True)
class KeyLayout:
    """Key names under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or any(ch.isspace() for ch in self.prefix):
            raise ValueError(f"invalid Redis key prefix {self.prefix!r}: it must be non-empty and contain no whitespace")

    @property
    def current(self) -> str:
        return f"{self.prefix}:current"

    @property
    def versions(self) -> str:
        return f"{self.prefix}:versions"

    def version_prefix(self, version: int) -> str:
        return f"{self.prefix}:v{int(version)}:"

    def manifest(self, version: int) -> str:
        return f"{self.version_prefix(version)}manifest"

    def glance_part(self, version: int, part: int) -> str:
        return f"{self.version_prefix(version)}glances:{int(part)}"

    def users(self, version: int, shard: int) -> str:
        return f"{self.version_prefix(version)}users:{int(shard)}"


@dataclass(frozen=True)
class RowCodec:
    """Packs one user's sections into the row bytes stored in a users hash, and back."""

    meta_dim: int
    embedding_dim: int

    @property
    def width(self) -> int:
        return self.meta_dim + 2 * self.embedding_dim

    @property
    def row_bytes(self) -> int:
        return 4 * self.width

    def encode_rows(self, meta: np.ndarray, image: np.ndarray, text: np.ndarray) -> list[bytes]:
        """Return the row bytes of every row of the three section matrices."""
        matrix = np.concatenate(
            [np.asarray(meta, "<f4"), np.asarray(image, "<f4"), np.asarray(text, "<f4")], axis=1
        )
        if matrix.shape[1] != self.width:
            raise StoreLayoutError(f"user rows have {matrix.shape[1]} columns, expected {self.width}")
        matrix = np.ascontiguousarray(matrix)
        row_bytes = self.row_bytes
        buffer = matrix.tobytes()
        return [buffer[start : start + row_bytes] for start in range(0, len(buffer), row_bytes)]

    def decode_rows(self, values: list[bytes]) -> np.ndarray:
        """Return a ``[len(values), width]`` float32 matrix; raise on a value of the wrong size."""
        for value in values:
            if len(value) != self.row_bytes:
                raise StoreLayoutError(f"user row has {len(value)} bytes, expected {self.row_bytes}")
        if not values:
            return np.zeros((0, self.width), np.float32)
        return np.frombuffer(b"".join(values), dtype="<f4").reshape(len(values), self.width).astype(np.float32)

    def split(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the (meta, image, text) column blocks of decoded rows."""
        meta_end = self.meta_dim
        image_end = meta_end + self.embedding_dim
        return matrix[:, :meta_end], matrix[:, meta_end:image_end], matrix[:, image_end:]


def encode_glance_part(ids: np.ndarray, meta: np.ndarray, image: np.ndarray, text: np.ndarray) -> bytes:
    """Return the ``.npz`` bytes of one glance part (saved without pickle)."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        ids=np.asarray(ids).astype(str),
        meta=np.asarray(meta, np.float32),
        image=np.asarray(image, np.float32),
        text=np.asarray(text, np.float32),
    )
    return buffer.getvalue()


def decode_glance_part(value: bytes) -> dict[str, np.ndarray]:
    """Return the arrays of one glance part; raise ``StoreLayoutError`` on a malformed value."""
    try:
        with np.load(io.BytesIO(value), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError) as error:
        raise StoreLayoutError(f"glance part is not a valid .npz value: {error}") from error
    missing = [key for key in ("ids", *SECTIONS) if key not in arrays]
    if missing:
        raise StoreLayoutError(f"glance part lacks arrays {missing}")
    return arrays


def manifest_from_json(text: str | bytes) -> tuple[Manifest, Mapping[str, Any]]:
    """Parse a stored manifest; return the snapshot ``Manifest`` and the store section.

    The store section holds ``layout_version``, ``glance_parts`` (key suffix, rows, SHA-256 per
    part) and ``users_per_shard``.
    """
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StoreLayoutError(f"stored manifest is not valid JSON: {error}") from error
    if raw.get("format_version") != FORMAT_VERSION:
        raise StoreLayoutError(f"stored manifest has format_version {raw.get('format_version')!r}; this reader supports {FORMAT_VERSION}")
    store = raw.get("store") or {}
    if store.get("layout_version") != LAYOUT_VERSION:
        raise StoreLayoutError(f"stored manifest has layout_version {store.get('layout_version')!r}; this reader supports {LAYOUT_VERSION}")
    cold_start = {section: np.asarray(raw["cold_start"][section], np.float32) for section in SECTIONS}
    for section, vector in cold_start.items():
        if not np.all(np.isfinite(vector)):
            raise StoreLayoutError(f"stored manifest of version {raw.get('version')}: cold-start section {section!r} contains NaN or inf")
    manifest = Manifest(
        version=int(raw["version"]),
        num_shards=int(raw["num_shards"]),
        meta_columns=tuple(raw["meta_columns"]),
        embedding_dim=int(raw["embedding_dim"]),
        fallback_score=float(raw["fallback_score"]),
        cold_start=cold_start,
        counts=raw["counts"],
        files=raw.get("files", {}),
        info=raw.get("info", {}),
    )
    return manifest, store

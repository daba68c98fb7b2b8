"""User-id hashing shared by the router, the shard controllers, the leaves and the profile build.

The shard of a user is ``mmh3_x86_32(utf8(user_id), seed=0) mod num_shards`` with the hash read
as an unsigned 32-bit integer. The experiment bucket uses the same hash with a different seed,
so the variant a user sees does not depend on the shard the user lives on.
"""

from __future__ import annotations

import mmh3

__all__ = [
    "SHARD_SEED",
    "BUCKET_SEED",
    "BUCKETS",
    "user_hash",
    "shard_of",
    "bucket_of",
]

SHARD_SEED = 0
BUCKET_SEED = 0x5EED_B0C7
# Experiment buckets per user population: traffic fractions resolve to 1/10,000.
BUCKETS = 10_000


def user_hash(user_id: str, *, seed: int = SHARD_SEED) -> int:
    """Return the unsigned MurmurHash3 x86 32-bit hash of the UTF-8 bytes of ``user_id``."""
    return mmh3.hash(user_id.encode("utf-8"), seed, signed=False)


def shard_of(user_id: str, num_shards: int) -> int:
    """Return the shard index in ``[0, num_shards)`` that holds ``user_id``'s profile."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    return user_hash(user_id, seed=SHARD_SEED) % num_shards


def bucket_of(user_id: str) -> int:
    """Return the experiment bucket in ``[0, BUCKETS)`` of ``user_id``, independent of its shard."""
    return user_hash(user_id, seed=BUCKET_SEED) % BUCKETS

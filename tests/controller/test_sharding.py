"""Shard and bucket hashing: reference vectors, independence, and agreement between tiers."""

import struct

import pytest

from controller.router import Router, RouterConfig
from fmlite.sharding import BUCKET_SEED, BUCKETS, bucket_of, shard_of, user_hash
from prometheus_client import CollectorRegistry


def murmur3_x86_32(data: bytes, seed: int) -> int:
    """Independent pure-Python MurmurHash3 x86 32-bit, to cross-check the mmh3 binding."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF
    h = seed & mask
    blocks = len(data) // 4
    for (k,) in struct.iter_unpack("<I", data[: blocks * 4]):
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        k = (k * c2) & mask
        h ^= k
        h = ((h << 13) | (h >> 19)) & mask
        h = (h * 5 + 0xE6546B64) & mask
    tail = data[blocks * 4:]
    k = 0
    for index, byte in enumerate(tail):
        k |= byte << (8 * index)
    if tail:
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        k = (k * c2) & mask
        h ^= k
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    h ^= h >> 16
    return h


# (user id, unsigned hash with seed 0, shard of 2, shard of 4, bucket)
REFERENCE = [
    ("", 0, 0, 0, 6363),
    ("hello", 613153351, 1, 3, 1086),
    ("The quick brown fox jumps over the lazy dog", 776992547, 1, 3, 8310),
    ("U81994", 1540229372, 0, 0, 1441),
    ("U55130", 1274872028, 0, 0, 5345),
    ("ユーザー42", 1190208180, 0, 0, 7415),
    ("Zoë", 2255564058, 0, 2, 4107),
    ("用户", 3681788688, 0, 0, 6290),
]


@pytest.mark.parametrize("user_id, expected_hash, shard2, shard4, bucket", REFERENCE)
def test_reference_vectors(user_id, expected_hash, shard2, shard4, bucket):
    assert user_hash(user_id) == expected_hash
    assert murmur3_x86_32(user_id.encode("utf-8"), 0) == expected_hash
    assert shard_of(user_id, 2) == shard2
    assert shard_of(user_id, 4) == shard4
    assert bucket_of(user_id) == bucket
    assert murmur3_x86_32(user_id.encode("utf-8"), BUCKET_SEED) % BUCKETS == bucket


def test_published_murmur3_values():
    # Values published with MurmurHash3's reference implementation.
    assert user_hash("", seed=1) == 0x514E28B7
    assert user_hash("hello") == 0x248BFA47


def test_shard_rejects_zero_shards():
    with pytest.raises(ValueError, match="at least 1"):
        shard_of("u", 0)


def test_bucket_independent_of_shard():
    users = [f"user-{i}" for i in range(20000)]
    in_shard0 = [bucket_of(u) < BUCKETS // 2 for u in users if shard_of(u, 2) == 0]
    in_shard1 = [bucket_of(u) < BUCKETS // 2 for u in users if shard_of(u, 2) == 1]
    assert abs(sum(in_shard0) / len(in_shard0) - 0.5) < 0.03
    assert abs(sum(in_shard1) / len(in_shard1) - 0.5) < 0.03


def test_router_uses_shared_hash():
    router = Router(RouterConfig(shards={0: ("127.0.0.1:1",), 1: ("127.0.0.1:2",), 2: ("127.0.0.1:3",)}), registry=CollectorRegistry())
    for user_id, *_ in REFERENCE:
        assert router.route(user_id)[0] == shard_of(user_id, 3)

"""Adaptive chunk size of an L1 against real leaves on loopback: grows, shrinks, fits the budget share.

The leaves are real ``LeafHandler``s (NumPy runner, trained artifacts) behind the Thrift/HTTP
server. ``PacedLeaf`` can add a blocking pause per glance id before the real handler runs, which
is how a slower runner behaves: the leaf's event loop serves one call at a time. The checks use
the sizer's own fit and chosen sizes, never a measured duration.
"""

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from controller.chunking import AdaptiveChunkConfig
from controller.hedging import HedgeConfig
from controller.shard import ShardController, ShardControllerConfig
from fmlite import snapshot
from fmlite.sharding import shard_of
from leaf.service import LeafConfig, LeafHandler
from rpc.idl import fmlite_thrift as T
from rpc.server import ServerConfig, ThriftHttpServer

SHARD = 0
COUNT = 300
CHUNK_TIMEOUT_MS = 400.0
SHARE = 0.5


class PacedLeaf:
    """A real leaf handler, optionally slowed by ``pause_per_id_s`` of blocking time per glance id."""

    tier = "leaf"

    def __init__(self, handler: LeafHandler):
        self.handler = handler
        self.pause_per_id_s = 0.0

    async def predict(self, request):
        if self.pause_per_id_s:
            time.sleep(self.pause_per_id_s * len(request.glance_ids))
        return await self.handler.predict(request)

    async def health(self):
        return await self.handler.health()


@pytest.fixture(scope="module")
def leaf_handler(trained_artifacts):
    root = trained_artifacts.out_dir / "profiles"
    base = trained_artifacts.out_dir / "models" / "fmlite"
    config = LeafConfig(shard=SHARD, num_shards=2, profiles=str(root), models={"fmlite": str(base)}, reload_interval_s=0, serve_cosine=False)
    handler = LeafHandler(config, registry=CollectorRegistry())
    handler.load()
    yield handler
    handler.reloader.stop()


@pytest.fixture(scope="module")
def request_ids(trained_artifacts):
    root = trained_artifacts.out_dir / "profiles"
    directory = root / str(snapshot.current_version(root))
    manifest = snapshot.read_manifest(directory)
    users = snapshot.load_users(directory, SHARD, manifest)
    user_id = next(u for u in users.ids.tolist() if shard_of(str(u), 2) == SHARD)
    glances = [str(g) for g in snapshot.load_glances(directory, manifest).ids.tolist()]
    return str(user_id), [glances[i % len(glances)] for i in range(COUNT)]


async def start_platform(leaf: PacedLeaf, replicas: int):
    servers = [ThriftHttpServer(leaf, ServerConfig(), registry=CollectorRegistry()) for _ in range(replicas)]
    ports = [await server.start() for server in servers]
    registry = CollectorRegistry()
    config = ShardControllerConfig(
        shard=SHARD,
        num_shards=2,
        leaves=tuple(f"127.0.0.1:{port}" for port in ports),
        chunk_timeout_ms=CHUNK_TIMEOUT_MS,
        hedging=HedgeConfig(enabled=False),
        adaptive_chunks=AdaptiveChunkConfig(budget_share=SHARE, min_size=50),
    )
    controller = ShardController(config, registry=registry)
    await controller.start()
    return servers, controller, registry


async def stop_platform(servers, controller):
    await controller.close()
    for server in servers:
        await server.stop()


async def send(controller, registry, user_id, glance_ids, *, timeout_ms=5000):
    """Send one request; return the chunk size the L1 chose and the response (None on DeadlineExceeded)."""
    try:
        response = await controller.predict(T.PredictRequest(user_id=user_id, glance_ids=glance_ids, timeout_ms=timeout_ms))
    except T.DeadlineExceeded:
        response = None
    size = registry.get_sample_value("fmlite_adaptive_chunk_size", {"tier": "l1", "variant": "fmlite"})
    return int(size), response


async def test_fast_leaf_grows_to_one_chunk(leaf_handler, request_ids):
    user_id, glance_ids = request_ids
    servers, controller, registry = await start_platform(PacedLeaf(leaf_handler), replicas=1)
    try:
        sizes = []
        for _ in range(5):
            size, response = await send(controller, registry, user_id, glance_ids)
            assert len(response.scores) == COUNT
            sizes.append(size)
    finally:
        await stop_platform(servers, controller)
    assert sizes[0] == 200
    assert sizes[-1] == COUNT
    assert sizes == sorted(sizes)


async def test_two_replicas_share_the_work(leaf_handler, request_ids):
    user_id, glance_ids = request_ids
    servers, controller, registry = await start_platform(PacedLeaf(leaf_handler), replicas=2)
    try:
        for _ in range(4):
            size, response = await send(controller, registry, user_id, glance_ids)
            assert len(response.scores) == COUNT
    finally:
        await stop_platform(servers, controller)
    assert size == COUNT // 2


async def test_slowed_leaf_shrinks_within_budget_share(leaf_handler, request_ids):
    user_id, glance_ids = request_ids
    leaf = PacedLeaf(leaf_handler)
    servers, controller, registry = await start_platform(leaf, replicas=1)
    sizer = controller.chunk_sizer
    try:
        for _ in range(4):
            fast_size, _ = await send(controller, registry, user_id, glance_ids)
        # 1 ms per id: one chunk of 300 ids would take 300 ms of a 400 ms call budget.
        leaf.pause_per_id_s = 0.001
        slow_sizes = []
        for _ in range(5):
            # The sizer chooses the size from the fit as it is before the request.
            fixed_s, per_glance_s = sizer.fits["fmlite"].fixed_s, sizer.fits["fmlite"].per_glance_s
            size, response = await send(controller, registry, user_id, glance_ids)
            assert len(response.scores) == COUNT
            slow_sizes.append(size)
        # A request with a 200 ms budget must plan calls that fit half of it.
        short_fixed_s, short_per_glance_s = sizer.fits["fmlite"].fixed_s, sizer.fits["fmlite"].per_glance_s
        short_size, _ = await send(controller, registry, user_id, glance_ids, timeout_ms=200)
    finally:
        leaf.pause_per_id_s = 0.0
        await stop_platform(servers, controller)
    assert fast_size == COUNT
    assert slow_sizes[-1] < COUNT
    assert slow_sizes[-1] >= 50
    assert fixed_s + per_glance_s * slow_sizes[-1] <= SHARE * CHUNK_TIMEOUT_MS / 1000.0
    assert short_size < slow_sizes[-1]
    assert short_size == 50 or short_fixed_s + short_per_glance_s * short_size <= SHARE * 0.200


async def test_fixed_size_when_disabled(leaf_handler, request_ids):
    user_id, glance_ids = request_ids
    server = ThriftHttpServer(PacedLeaf(leaf_handler), ServerConfig(), registry=CollectorRegistry())
    port = await server.start()
    registry = CollectorRegistry()
    config = ShardControllerConfig(
        shard=SHARD, num_shards=2, leaves=(f"127.0.0.1:{port}",), chunk_timeout_ms=CHUNK_TIMEOUT_MS,
        adaptive_chunks=AdaptiveChunkConfig(enabled=False),
    )
    controller = ShardController(config, registry=registry)
    await controller.start()
    try:
        for _ in range(3):
            response = await controller.predict(T.PredictRequest(user_id=user_id, glance_ids=glance_ids, timeout_ms=5000))
            assert len(response.scores) == COUNT
    finally:
        await stop_platform([server], controller)
    assert registry.get_sample_value("fmlite_chunk_size_count", {"tier": "l1"}) == 9
    assert registry.get_sample_value("fmlite_adaptive_chunk_size", {"tier": "l1", "variant": "fmlite"}) is None

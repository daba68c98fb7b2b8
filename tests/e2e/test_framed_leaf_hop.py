"""L1 -> leaf over framed Thrift and over HTTP: real leaf, L1 and L0 processes give the same replies."""

import asyncio

import numpy as np
import pytest

from fmlite import snapshot
from loadtest.cluster import Cluster
from rpc.client import ThriftHttpClient
from rpc.framed_client import ThriftFramedClient
from rpc.idl import fmlite_thrift as T

NUM_SHARDS = 2


@pytest.fixture(scope="module")
def cluster(trained_artifacts, tmp_path_factory):
    var = trained_artifacts.out_dir
    local = Cluster(workdir=tmp_path_factory.mktemp("framed-hop"))
    try:
        leaves = local.start_leaves(
            kind="numpy", profiles=var / "profiles", models={"fmlite": var / "models" / "fmlite"},
            shards=NUM_SHARDS, leaves_per_shard=1, tag="hop",
        )
        # Generous per-chunk timeouts: CI machines are shared and the suite runs beside TensorFlow.
        l1_arguments = ["--chunk-timeout-ms", "3000"]
        groups = {
            transport: local.start_group(leaves, tag=transport, leaf_transport=transport, l1_arguments=l1_arguments)
            for transport in ("framed", "http")
        }
        yield local, leaves, groups
    finally:
        codes = local.stop()
    assert all(code == 0 for code in codes.values()), f"a server did not exit cleanly after SIGTERM: {codes}"


@pytest.fixture(scope="module")
def requests(trained_artifacts):
    root = trained_artifacts.out_dir / "profiles"
    directory = root / str(snapshot.current_version(root))
    manifest = snapshot.read_manifest(directory)
    glance_ids = [str(g) for g in snapshot.load_glances(directory, manifest).ids]
    users = [str(u) for shard in range(NUM_SHARDS) for u in snapshot.load_users(directory, shard, manifest).ids[:2]]
    rng = np.random.default_rng(5)
    made = []
    for user_id in [*users, "never-seen-user"]:
        # 250 ids with repeats and one unknown id: three chunks of the default chunk size 100.
        ids = [glance_ids[i] for i in rng.integers(0, len(glance_ids), 249)] + ["N-never-seen"]
        made.append(T.PredictRequest(user_id=user_id, glance_ids=ids, timeout_ms=8000))
    return made


def call(client, request):
    async def run():
        try:
            return await client.predict(request, timeout_s=10.0)
        finally:
            await client.close()

    return asyncio.run(run())


def same_reply(first, second):
    assert first.scores == second.scores
    assert first.flags == second.flags
    assert (first.model_version, first.profile_version, first.shard) == (second.model_version, second.profile_version, second.shard)
    assert first.cold_start_user == second.cold_start_user
    assert first.unknown_glances == second.unknown_glances


def test_l1_command_lines_name_the_transport(cluster):
    _, _, groups = cluster
    for l1 in groups["framed"].l1s:
        leaves = l1.command[l1.command.index("--leaves") + 1]
        assert leaves.startswith("framed://127.0.0.1:")
    for l1 in groups["http"].l1s:
        leaves = l1.command[l1.command.index("--leaves") + 1]
        assert leaves.startswith("127.0.0.1:")


def test_leaf_replies_equal_over_both_transports(cluster, requests):
    _, leaves, _ = cluster
    from fmlite.sharding import shard_of

    for request in requests:
        leaf = leaves[shard_of(request.user_id, NUM_SHARDS)][0]
        chunk = T.PredictRequest(user_id=request.user_id, glance_ids=request.glance_ids[:100], timeout_ms=8000)
        framed = call(ThriftFramedClient(leaf.framed_address), chunk)
        http = call(ThriftHttpClient(leaf.address), chunk)
        same_reply(framed, http)


def test_platform_scores_equal_over_both_transports(cluster, requests):
    _, _, groups = cluster
    for request in requests:
        framed = call(ThriftHttpClient(groups["framed"].address), request)
        http = call(ThriftHttpClient(groups["http"].address), request)
        same_reply(framed, http)
        assert len(framed.scores) == len(request.glance_ids)
        assert framed.flags[-1] & T.FLAG_UNKNOWN_GLANCE

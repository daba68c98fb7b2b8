"""Fixtures of the profile store tests: a real redis-server on a free loopback port."""

from __future__ import annotations

import uuid

import pytest

from fmlite.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server for the session; tests keep apart by key prefix."""
    server = RedisServer(workdir=tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server for one test, which may stop, pause or restart it."""
    server = RedisServer(workdir=tmp_path / "redis").start()
    yield server
    server.resume()
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_client(redis_server):
    from model.publish import connect

    client = connect(redis_server.url, connect_timeout_s=2.0, socket_timeout_s=10.0)
    yield client
    client.close()

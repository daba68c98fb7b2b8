"""Thrift-over-HTTP server and client on loopback: round trips, bad bodies, limits and timeouts."""

import asyncio
import os
import random

import aiohttp
import pytest
from thriftpy2.thrift import TApplicationException

from rpc import codec
from rpc.client import ThriftHttpClient, parse_address
from rpc.errors import CallTimeout, RemoteError, TransportError
from rpc.idl import fmlite_thrift as T
from rpc.server import ServerConfig, ThriftHttpServer
from rpc.validation import MAX_GLANCES, max_body_bytes, validate_predict_request


class EchoHandler:
    """Scores each glance id by its length; sleeps when the user id asks for it."""

    tier = "leaf"

    def __init__(self):
        self.calls = 0

    async def predict(self, request):
        validate_predict_request(request)
        self.calls += 1
        if request.user_id.startswith("sleep-"):
            await asyncio.sleep(int(request.user_id.split("-")[1]) / 1000)
        if request.user_id == "crash":
            raise RuntimeError("handler bug")
        ids = request.glance_ids
        return T.PredictResponse(
            scores=[float(len(g)) for g in ids], flags=bytes(len(ids)), model_version="1", profile_version="1",
            variant="v", shard=0, request_id=request.request_id or "", unknown_glances=0, cold_start_user=False,
        )

    async def health(self):
        return T.HealthResponse(live=True, ready=True, status="ok", tier=self.tier)

    def readiness(self):
        return True, "ok"


@pytest.fixture
async def server():
    handler = EchoHandler()
    srv = ThriftHttpServer(handler, ServerConfig(max_body_bytes=max_body_bytes(), drain_timeout_s=2))
    port = await srv.start()
    yield srv, port, handler
    await srv.stop()


@pytest.fixture
async def client(server):
    _, port, _ = server
    c = ThriftHttpClient(f"127.0.0.1:{port}")
    yield c
    await c.close()


async def post_raw(port, body):
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{port}/thrift", data=body) as response:
            return response.status, await response.read()


def application_error(body):
    with pytest.raises(RemoteError) as caught:
        # any method name and seqid: decode_reply checks them first, so read the header directly
        name, _, seqid = codec._reader(body).read_message_begin()
        codec.decode_reply(body, name, seqid)
    return str(caught.value)


async def test_round_trip_in_order(client):
    ids = [f"g{'x' * (i % 7)}" for i in range(1000)]
    response = await client.predict(T.PredictRequest(user_id="u", glance_ids=ids, request_id="r1"), timeout_s=2)
    assert response.scores == [float(len(g)) for g in ids]
    assert response.request_id == "r1"


async def test_typed_error_reaches_client(client):
    with pytest.raises(T.InvalidRequest) as caught:
        await client.predict(T.PredictRequest(user_id="", glance_ids=[]), timeout_s=2)
    assert caught.value.field == "user_id"


async def test_internal_error_is_application_exception(client, server):
    with pytest.raises(RemoteError, match="internal error"):
        await client.predict(T.PredictRequest(user_id="crash", glance_ids=["a"]), timeout_s=2)
    response = await client.predict(T.PredictRequest(user_id="ok", glance_ids=["a"]), timeout_s=2)
    assert response.scores == [1.0]


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"", "empty request body"),
        (b"\x00\x01", "malformed Thrift message header"),
        (os.urandom(64), ""),
        (codec.encode_call("predict", 5, request=T.PredictRequest(user_id="u", glance_ids=["a"] * 50))[:-30], "malformed arguments"),
    ],
)
async def test_bad_bodies_get_application_errors(server, body, expected):
    _, port, _ = server
    status, reply = await post_raw(port, body)
    assert status == 200
    message = application_error(reply)
    assert expected in message


async def test_unknown_method(server):
    _, port, _ = server
    body = codec.encode_call("health", 9)
    body = body.replace(b"health", b"healty")
    status, reply = await post_raw(port, body)
    assert "unknown method 'healty'" in application_error(reply)


async def test_server_keeps_serving_after_garbage(server, client):
    _, port, _ = server
    rng = random.Random(3)
    for _ in range(50):
        await post_raw(port, bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))))
    response = await client.predict(T.PredictRequest(user_id="u", glance_ids=["ab"]), timeout_s=2)
    assert response.scores == [2.0]


async def test_oversized_body_is_typed_error_not_413(client):
    ids = ["g" * 120] * (MAX_GLANCES + 2000)
    with pytest.raises(T.InvalidRequest) as caught:
        await client.predict(T.PredictRequest(user_id="u", glance_ids=ids), timeout_s=5)
    assert str(MAX_GLANCES) in caught.value.message


async def test_maximum_glances_accepted_and_one_more_rejected(client):
    ids = ["g" * 128] * MAX_GLANCES
    response = await client.predict(T.PredictRequest(user_id="u", glance_ids=ids), timeout_s=10)
    assert len(response.scores) == MAX_GLANCES
    with pytest.raises(T.InvalidRequest, match=f"maximum of {MAX_GLANCES}"):
        await client.predict(T.PredictRequest(user_id="u", glance_ids=["a"] * (MAX_GLANCES + 1)), timeout_s=10)


async def test_non_utf8_and_long_ids_rejected(server):
    _, port, _ = server
    body = codec.encode_call("predict", 3, request=T.PredictRequest(user_id="u\u00e9", glance_ids=["ok"]))
    # Same length as "u\u00e9" in UTF-8, so the length prefix still matches.
    body = body.replace("u\u00e9".encode(), b"u\xff\xfe")
    _, reply = await post_raw(port, body)
    with pytest.raises(T.InvalidRequest, match="not valid UTF-8"):
        codec.decode_reply(reply, "predict", 3)
    body = codec.encode_call("predict", 4, request=T.PredictRequest(user_id="u", glance_ids=["x" * 129]))
    _, reply = await post_raw(port, body)
    with pytest.raises(T.InvalidRequest, match="maximum is 128"):
        codec.decode_reply(reply, "predict", 4)


async def test_timeout_then_next_call_gets_its_own_reply(client, server):
    for round_number in range(30):
        with pytest.raises(CallTimeout):
            await client.predict(T.PredictRequest(user_id="sleep-80", glance_ids=["slow"], request_id=f"slow{round_number}"), timeout_s=0.02)
        response = await client.predict(T.PredictRequest(user_id="fast", glance_ids=["abc"], request_id=f"fast{round_number}"), timeout_s=2)
        assert response.request_id == f"fast{round_number}"
        assert response.scores == [3.0]


async def test_concurrent_calls_never_mix(client):
    async def one(index):
        ids = [f"{index}-{j}" for j in range(index % 17 + 1)]
        try:
            response = await client.predict(
                T.PredictRequest(user_id=f"sleep-{index % 5 * 10}", glance_ids=ids, request_id=str(index)),
                timeout_s=0.025 if index % 3 == 0 else 2,
            )
        except CallTimeout:
            return None
        assert response.request_id == str(index)
        assert response.scores == [float(len(g)) for g in ids]
        return True

    results = await asyncio.gather(*(one(i) for i in range(300)))
    assert results.count(True) >= 200


async def test_connection_refused_is_transport_error():
    c = ThriftHttpClient("127.0.0.1:1")
    with pytest.raises(TransportError):
        await c.health(timeout_s=1)
    await c.close()


async def test_health_and_probe_routes(server, client):
    _, port, _ = server
    health = await client.health()
    assert health.ready and health.tier == "leaf"
    async with aiohttp.ClientSession() as session:
        for path, status in (("/healthz", 200), ("/readyz", 200), ("/metrics", 200)):
            async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                assert response.status == status
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert "fmlite_request_seconds" in await response.text()


def test_parse_address_errors():
    assert parse_address("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_address("[::1]:80") == ("::1", 80)
    for bad in ("localhost", ":80", "h:0", "h:99999", "h:x"):
        with pytest.raises(ValueError, match="invalid address"):
            parse_address(bad)


def test_application_exception_kind_for_wrong_message_type():
    body = codec.encode_reply("health", 1, codec.SERVICE.health_result(success=T.HealthResponse(live=True, ready=True, status="ok", tier="x")))
    with pytest.raises(codec.DecodeError) as caught:
        codec.decode_call(body)
    assert caught.value.kind == TApplicationException.INVALID_MESSAGE_TYPE

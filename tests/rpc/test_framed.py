"""Framed Thrift server and client on loopback: round trips, bad frames, timeouts, closing and draining."""

import asyncio
import random

import pytest
from thriftpy2.thrift import TApplicationException, TMessageType

from rpc import codec
from rpc.client import ThriftHttpClient
from rpc.errors import CallTimeout, ProtocolViolation, RemoteError, TransportError
from rpc.framed import FRAME_HEADER, client_for, split_transport
from rpc.framed_client import ThriftFramedClient
from rpc.framed_server import ThriftFramedServer
from rpc.idl import fmlite_thrift as T
from rpc.server import ServerConfig
from rpc.validation import MAX_GLANCES, max_body_bytes, validate_predict_request


class SlowEchoHandler:
    """Scores each glance id by its length; ``sleep-N`` user ids wait N ms, and cancellations are counted."""

    tier = "leaf"

    def __init__(self):
        self.calls = 0
        self.cancelled = 0

    async def predict(self, request):
        validate_predict_request(request)
        self.calls += 1
        if request.user_id.startswith("sleep-"):
            try:
                await asyncio.sleep(int(request.user_id.split("-")[1]) / 1000)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        ids = request.glance_ids
        return T.PredictResponse(
            scores=[float(len(g)) for g in ids], flags=bytes(len(ids)), model_version="1", profile_version="1",
            variant="v", shard=0, request_id=request.request_id or "", unknown_glances=0, cold_start_user=False,
        )

    async def health(self):
        return T.HealthResponse(live=True, ready=True, status="ok", tier=self.tier)

    def readiness(self):
        return True, "ok"


def make_request(user="u", ids=("a", "bb"), request_id="r", timeout_ms=None):
    return T.PredictRequest(user_id=user, glance_ids=list(ids), request_id=request_id, timeout_ms=timeout_ms)


async def start_server(handler=None, **config):
    handler = handler or SlowEchoHandler()
    options = {"max_body_bytes": max_body_bytes(), "drain_timeout_s": 2.0, **config}
    server = ThriftFramedServer(handler, ServerConfig(**options))
    port = await server.start()
    return server, port, handler


@pytest.fixture
async def server():
    server, port, handler = await start_server()
    yield server, port, handler
    await server.stop()


@pytest.fixture
async def client(server):
    _, port, _ = server
    c = ThriftFramedClient(f"framed://127.0.0.1:{port}")
    yield c
    await c.close()


async def raw_exchange(port, data, *, half_close=True, read_timeout_s=2.0):
    """Send ``data`` on a new connection and return every byte the server sends before closing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    if half_close:
        writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), read_timeout_s)
    finally:
        writer.close()


def frame(message):
    return FRAME_HEADER.pack(len(message)) + message


def split_reply(data):
    """Return the message of the single reply frame in ``data``."""
    assert len(data) >= 4, f"no reply frame, got {data!r}"
    length = FRAME_HEADER.unpack_from(data)[0]
    assert len(data) == 4 + length, f"expected one frame of {length} bytes, got {len(data) - 4}"
    return data[4:]


def application_error(message):
    """Decode an application-exception reply into (method name, kind, text)."""
    protocol = codec._reader(message)
    name, message_type, _ = protocol.read_message_begin()
    assert message_type == TMessageType.EXCEPTION
    error = TApplicationException()
    protocol.read_struct(error)
    return name, error.type, error.message


# ---- round trips ---------------------------------------------------------------------------------


async def test_round_trip_predict_and_health(client):
    response = await client.predict(make_request(ids=["a", "bb", "ccc"], request_id="7"), timeout_s=1)
    assert response.scores == [1.0, 2.0, 3.0]
    assert response.request_id == "7"
    health = await client.health()
    assert health.ready
    assert health.tier == "leaf"


async def test_typed_error_reaches_client(client):
    with pytest.raises(T.InvalidRequest) as raised:
        await client.predict(make_request(ids=["x" * 200]), timeout_s=1)
    assert raised.value.field == "glance_ids[0]"


async def test_maximum_glances_accepted_and_one_more_rejected(client):
    ids = [f"{i:032d}" for i in range(MAX_GLANCES)]
    response = await client.predict(make_request(ids=ids), timeout_s=5)
    assert len(response.scores) == MAX_GLANCES
    with pytest.raises(T.InvalidRequest) as raised:
        await client.predict(make_request(ids=[*ids, "x"]), timeout_s=5)
    assert raised.value.field == "glance_ids"


async def test_concurrent_calls_on_one_client_never_mix(client):
    async def one(index):
        ids = ["g" * (1 + index % 30)] * (1 + index % 7)
        response = await client.predict(make_request(user=f"sleep-{index % 5}", ids=ids, request_id=str(index)), timeout_s=5)
        assert response.request_id == str(index)
        assert response.scores == [float(len(g)) for g in ids]

    await asyncio.gather(*(one(i) for i in range(300)))


async def test_metrics_count_calls_by_outcome(server, client):
    srv, _, _ = server
    await client.predict(make_request(), timeout_s=1)
    with pytest.raises(T.InvalidRequest):
        await client.predict(make_request(ids=["x" * 200]), timeout_s=1)
    histogram = srv.metrics.request_seconds
    assert histogram.labels(tier="leaf", method="predict", outcome="ok")._sum.get() > 0
    assert histogram.labels(tier="leaf", method="predict", outcome="InvalidRequest")._sum.get() > 0


async def test_budget_spent_while_reading_is_not_dispatched(server):
    srv, port, handler = server
    message = frame(codec.encode_call("predict", 2, request=make_request(timeout_ms=5)))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(message[:20])
        await writer.drain()
        await asyncio.sleep(0.03)  # longer than the call's 5 ms budget
        writer.write(message[20:])
        length = FRAME_HEADER.unpack(await reader.readexactly(4))[0]
        with pytest.raises(T.DeadlineExceeded):
            codec.decode_reply(await reader.readexactly(length), "predict", 2)
    finally:
        writer.close()
    assert srv.metrics.expired._value.get() == 1
    assert handler.calls == 0


# ---- timeouts and cancellation -------------------------------------------------------------------


async def test_timeout_closes_connection_and_cancels_handler(server):
    srv, port, handler = server
    c = ThriftFramedClient(f"framed://127.0.0.1:{port}", pool_size=1)
    try:
        with pytest.raises(CallTimeout):
            await c.predict(make_request(user="sleep-300", request_id="late"), timeout_s=0.05)
        response = await c.predict(make_request(request_id="next"), timeout_s=1)
        assert response.request_id == "next"
        await asyncio.sleep(0.05)
        assert handler.cancelled == 1
    finally:
        await c.close()


class ScriptedServer:
    """A raw framed peer: records every request and replies through the ``reply`` coroutine, per connection."""

    def __init__(self, reply):
        self.reply = reply
        self.connections = 0
        self.requests: list[tuple[int, bytes]] = []
        self.writers = []

    async def handle(self, reader, writer):
        self.connections += 1
        connection = self.connections
        self.writers.append(writer)
        try:
            while True:
                header = await reader.readexactly(4)
                message = await reader.readexactly(FRAME_HEADER.unpack(header)[0])
                self.requests.append((connection, message))
                await self.reply(connection, message, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self):
        self._server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        for writer in self.writers:
            writer.close()
        self._server.close()


def echo_reply(message):
    """Return a framed success reply to the predict or health call in ``message``."""
    name, seqid, args = codec.decode_call(message)
    if name == "health":
        result = codec.SERVICE.health_result(success=T.HealthResponse(live=True, ready=True, status="ok", tier="leaf"))
    else:
        request = args.request
        result = codec.SERVICE.predict_result(success=T.PredictResponse(
            scores=[0.0] * len(request.glance_ids), flags=bytes(len(request.glance_ids)), model_version="1",
            profile_version="1", variant="v", shard=0, request_id=request.request_id, unknown_glances=0, cold_start_user=False))
    return frame(codec.encode_reply(name, seqid, result))


async def test_late_reply_never_reaches_next_call():
    async def reply(connection, message, writer):
        if connection == 1:
            await asyncio.sleep(0.2)  # replies after the caller gave up
        writer.write(echo_reply(message))

    async with ScriptedServer(reply) as peer:
        c = ThriftFramedClient(f"framed://127.0.0.1:{peer.port}", pool_size=1)
        try:
            with pytest.raises(CallTimeout):
                await c.predict(make_request(request_id="first"), timeout_s=0.05)
            response = await c.predict(make_request(request_id="second"), timeout_s=1)
            assert response.request_id == "second"
            assert peer.connections == 2
        finally:
            await c.close()


async def test_stray_reply_closes_idle_connection():
    async def reply(connection, message, writer):
        writer.write(echo_reply(message))
        await asyncio.sleep(0.02)
        writer.write(echo_reply(message))  # a second reply that no call requested

    async with ScriptedServer(reply) as peer:
        c = ThriftFramedClient(f"framed://127.0.0.1:{peer.port}", pool_size=1)
        try:
            first = await c.predict(make_request(request_id="a"), timeout_s=1)
            await asyncio.sleep(0.1)
            second = await c.predict(make_request(request_id="b"), timeout_s=1)
            assert (first.request_id, second.request_id) == ("a", "b")
            assert peer.connections == 2
        finally:
            await c.close()


async def test_bytes_after_reply_frame_are_transport_error():
    async def reply(connection, message, writer):
        writer.write(echo_reply(message) + b"\x00\x00")

    async with ScriptedServer(reply) as peer:
        c = ThriftFramedClient(f"framed://127.0.0.1:{peer.port}")
        try:
            with pytest.raises(TransportError, match="bytes arrived after"):
                await c.predict(make_request(), timeout_s=1)
        finally:
            await c.close()


async def test_reply_of_another_call_is_protocol_violation():
    async def reply(connection, message, writer):
        name, seqid, _ = codec.decode_call(message)
        result = codec.SERVICE.health_result(success=T.HealthResponse(live=True, ready=True, status="ok", tier="leaf"))
        writer.write(frame(codec.encode_reply(name, seqid + 1, result)))

    async with ScriptedServer(reply) as peer:
        c = ThriftFramedClient(f"framed://127.0.0.1:{peer.port}")
        try:
            with pytest.raises(ProtocolViolation):
                await c.health(timeout_s=1)
        finally:
            await c.close()


async def test_oversized_reply_length_is_transport_error():
    async def reply(connection, message, writer):
        writer.write(FRAME_HEADER.pack(0x7FFFFFFF) + b"\x80\x01")

    async with ScriptedServer(reply) as peer:
        c = ThriftFramedClient(f"framed://127.0.0.1:{peer.port}")
        try:
            with pytest.raises(TransportError, match="exceeds the limit"):
                await c.health(timeout_s=1)
        finally:
            await c.close()


# ---- a server closing connections ----------------------------------------------------------------


async def test_pooled_connection_closed_by_server_is_resent_once(server, client):
    srv, _, handler = server
    await client.health()
    for connection in list(srv.connections):
        connection.close()
    response = await client.predict(make_request(request_id="after-close"), timeout_s=1)
    assert response.request_id == "after-close"


async def test_close_before_reply_on_pooled_connection_resends_once():
    async def reply(connection, message, writer):
        if connection == 1 and len(peer.requests) == 1:
            writer.write(echo_reply(message))
        elif connection == 1:
            writer.close()  # closes without a reply byte, as a server that drains does
        else:
            writer.write(echo_reply(message))

    async with ScriptedServer(reply) as peer:
        c = ThriftFramedClient(f"framed://127.0.0.1:{peer.port}", pool_size=1)
        try:
            await c.predict(make_request(request_id="one"), timeout_s=1)
            response = await c.predict(make_request(request_id="two"), timeout_s=1)
            assert response.request_id == "two"
            assert [connection for connection, _ in peer.requests] == [1, 1, 2]
        finally:
            await c.close()


async def test_fresh_connection_close_not_resent():
    async def reply(connection, message, writer):
        writer.close()

    async with ScriptedServer(reply) as peer:
        c = ThriftFramedClient(f"framed://127.0.0.1:{peer.port}")
        try:
            with pytest.raises(TransportError, match="before the reply"):
                await c.predict(make_request(), timeout_s=1)
            assert len(peer.requests) == 1
        finally:
            await c.close()


async def test_connection_refused_is_transport_error():
    c = ThriftFramedClient("framed://127.0.0.1:1")
    with pytest.raises(TransportError):
        await c.health(timeout_s=1)
    await c.close()


# ---- bad frames ----------------------------------------------------------------------------------


async def test_oversized_frame_invalid_request():
    srv, port, _ = await start_server(max_body_bytes=4096)
    c = ThriftFramedClient(f"framed://127.0.0.1:{port}")
    try:
        ids = [f"{i:032d}" for i in range(500)]
        with pytest.raises(T.InvalidRequest) as raised:
            await c.predict(make_request(ids=ids), timeout_s=2)
        assert raised.value.field == "glance_ids"
        size = len(codec.encode_call("predict", 1, request=make_request(ids=ids)))
        assert f"frame of {size} bytes" in raised.value.message
        assert "exceeds 4096 bytes" in raised.value.message
        # The connection of the rejected frame is closed; the server keeps serving new ones.
        assert (await c.health(timeout_s=1)).ready
    finally:
        await c.close()
        await srv.stop()


async def test_huge_frame_length_gets_protocol_error(server):
    _, port, _ = server
    data = await raw_exchange(port, FRAME_HEADER.pack(0xFFFFFFF0) + b"\x00" * 16)
    name, kind, text = application_error(split_reply(data))
    assert kind == TApplicationException.PROTOCOL_ERROR
    assert f"frame of {0xFFFFFFF0} bytes" in text
    assert f"exceeds {max_body_bytes()} bytes" in text


async def test_http_on_framed_port_rejected(server, client):
    _, port, _ = server
    data = await raw_exchange(port, b"POST /thrift HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    _, kind, _ = application_error(split_reply(data))
    assert kind == TApplicationException.PROTOCOL_ERROR
    assert (await client.health()).ready


@pytest.mark.parametrize("cut", [1, 4, 13, 30])
async def test_truncated_message_in_frame_gets_protocol_error(server, client, cut):
    _, port, _ = server
    message = codec.encode_call("predict", 5, request=make_request(ids=["a" * 10] * 5))
    data = await raw_exchange(port, frame(message[:cut]))
    _, kind, text = application_error(split_reply(data))
    assert kind == TApplicationException.PROTOCOL_ERROR
    assert text
    assert (await client.health()).ready


async def test_connection_ending_inside_frame_gets_protocol_error(server, client):
    _, port, _ = server
    message = codec.encode_call("predict", 9, request=make_request())
    data = await raw_exchange(port, FRAME_HEADER.pack(len(message)) + message[:10])
    name, kind, text = application_error(split_reply(data))
    assert kind == TApplicationException.PROTOCOL_ERROR
    assert f"after 10 bytes of a {len(message)}-byte frame" in text
    assert (await client.health()).ready


async def test_connection_ending_inside_length_gets_protocol_error(server):
    _, port, _ = server
    data = await raw_exchange(port, b"\x00\x00")
    _, kind, text = application_error(split_reply(data))
    assert kind == TApplicationException.PROTOCOL_ERROR
    assert "2 bytes of a 4-byte frame length" in text


async def test_garbage_frames_get_errors_and_server_keeps_serving(server, client):
    srv, port, _ = server
    random_generator = random.Random(3)
    for size in (0, 1, 7, 64, 1000):
        data = await raw_exchange(port, frame(bytes(random_generator.randrange(256) for _ in range(size))))
        _, kind, _ = application_error(split_reply(data))
        assert kind in (TApplicationException.PROTOCOL_ERROR, TApplicationException.UNKNOWN_METHOD,
                        TApplicationException.INVALID_MESSAGE_TYPE)
    assert srv.metrics.malformed._value.get() == 5
    assert (await client.health()).ready


async def test_wrong_field_type_gets_invalid_request_naming_field(server):
    _, port, _ = server
    message = codec.encode_call("predict", 3, request=make_request())
    # Field 1 of PredictRequest (user_id, a string) re-sent as an i32 with the same bytes after it.
    header_end = 12 + len("predict")
    body = bytearray(message)
    # Argument struct: field 1 (request, struct) header is 3 bytes; the first field inside it follows.
    inner = header_end + 3
    assert body[inner] == 11  # string
    body[inner] = 8  # i32
    data = await raw_exchange(port, frame(bytes(body)))
    with pytest.raises(T.InvalidRequest) as raised:
        codec.decode_reply(split_reply(data), "predict", 3)
    assert raised.value.field == "user_id"


async def test_unknown_method_is_remote_error(server):
    _, port, _ = server
    message = codec.encode_call("health", 4)
    renamed = message.replace(b"health", b"healty")
    data = await raw_exchange(port, frame(renamed))
    with pytest.raises(RemoteError):
        codec.decode_reply(split_reply(data), "healty", 4)


async def test_back_to_back_frames_in_order(server):
    _, port, _ = server
    messages = [codec.encode_call("predict", i, request=make_request(ids=["x" * i], request_id=str(i))) for i in range(1, 6)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(frame(m) for m in messages))
        for i in range(1, 6):
            length = FRAME_HEADER.unpack(await reader.readexactly(4))[0]
            response = codec.decode_reply(await reader.readexactly(length), "predict", i)
            assert response.request_id == str(i)
    finally:
        writer.close()


# ---- drain ---------------------------------------------------------------------------------------


async def test_drain_finishes_in_flight_call_and_stops_accepting():
    srv, port, handler = await start_server(drain_timeout_s=2.0)
    busy = ThriftFramedClient(f"framed://127.0.0.1:{port}")
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        slow = asyncio.create_task(busy.predict(make_request(user="sleep-200", request_id="slow"), timeout_s=2))
        await asyncio.sleep(0.05)
        assert srv.in_flight == 1
        await srv.stop()
        response = await slow
        assert response.request_id == "slow"
        assert srv.answered_while_draining == 1
        # The idle connection was closed and no new connection is accepted.
        assert await asyncio.wait_for(idle_reader.read(), 1) == b""
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
    finally:
        idle_writer.close()
        await busy.close()


async def test_drain_timeout_cancels_calls_left():
    srv, port, handler = await start_server(drain_timeout_s=0.1)
    c = ThriftFramedClient(f"framed://127.0.0.1:{port}")
    try:
        slow = asyncio.create_task(c.predict(make_request(user="sleep-2000"), timeout_s=3))
        await asyncio.sleep(0.05)
        await srv.stop()
        with pytest.raises(TransportError):
            await slow
        assert srv.cancelled_while_draining == 1
        assert handler.cancelled == 1
    finally:
        await c.close()


# ---- addresses -----------------------------------------------------------------------------------


def test_split_transport_and_client_choice():
    assert split_transport("framed://127.0.0.1:9100") == ("framed", "127.0.0.1:9100")
    assert split_transport("127.0.0.1:9100") == ("http", "127.0.0.1:9100")
    assert isinstance(client_for("framed://127.0.0.1:9100"), ThriftFramedClient)
    assert isinstance(client_for("127.0.0.1:9100"), ThriftHttpClient)
    with pytest.raises(ValueError, match="unknown scheme 'grpc'"):
        split_transport("grpc://127.0.0.1:9100")
    with pytest.raises(ValueError, match="expected framed://HOST:PORT"):
        ThriftFramedClient("127.0.0.1:9100")
    with pytest.raises(ValueError, match="port in 1..65535"):
        ThriftFramedClient("framed://127.0.0.1:0")


async def test_stalled_frame_closes_connection():
    server, port, handler = await start_server(frame_read_timeout_s=0.3)
    try:
        body = codec.encode_call("predict", 1, request=make_request())
        whole = frame(body)
        # Header and half the message, then silence: the server closes without a reply.
        stalled = await raw_exchange(port, whole[: len(whole) // 2], half_close=False, read_timeout_s=5.0)
        assert stalled == b""
        assert handler.calls == 0
        assert server.metrics.malformed._value.get() == 1
        # A frame sent in two parts within the limit is served, and so is the next one.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(whole[:10])
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(whole[10:] + whole)
        await writer.drain()
        for _ in range(2):
            header = await asyncio.wait_for(reader.readexactly(4), 5.0)
            message = await asyncio.wait_for(reader.readexactly(FRAME_HEADER.unpack(header)[0]), 5.0)
            assert codec.decode_reply(message, "predict", 1).scores == [1.0, 2.0]
        # Idle between frames is not a stalled frame: the connection stays open past the limit.
        await asyncio.sleep(0.5)
        writer.write(whole)
        await writer.drain()
        header = await asyncio.wait_for(reader.readexactly(4), 5.0)
        assert len(await asyncio.wait_for(reader.readexactly(FRAME_HEADER.unpack(header)[0]), 5.0)) > 0
        writer.close()
        assert handler.calls == 3
    finally:
        await server.stop()


def test_frame_read_timeout_must_be_positive():
    with pytest.raises(ValueError, match="frame_read_timeout_s must be positive"):
        ServerConfig(frame_read_timeout_s=0)

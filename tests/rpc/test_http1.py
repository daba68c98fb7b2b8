"""The keep-alive HTTP/1.1 client under misbehaving servers: late, stray, chunked and closing replies.

Each test runs a small raw asyncio server on loopback that replies the way the case needs and
counts the connections it accepted, so connection reuse is observed from the server's side.
"""

import asyncio

import pytest

from rpc import codec
from rpc.client import ThriftHttpClient
from rpc.errors import CallTimeout, ProtocolViolation, TransportError
from rpc.http1 import Http1Pool, MalformedResponse
from rpc.idl import fmlite_thrift as T


def health_reply(seqid: int, status: str = "ok") -> bytes:
    result = codec.SERVICE.health_result(success=T.HealthResponse(live=True, ready=True, status=status, tier="leaf"))
    return codec.encode_reply("health", seqid, result)


def http_response(body: bytes, *extra_headers: str) -> bytes:
    head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-thrift\r\n" + "".join(h + "\r\n" for h in extra_headers)
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class RawServer:
    """Reads one request at a time and lets ``respond(request_number, seqid, writer)`` reply to it."""

    def __init__(self, respond):
        self.respond = respond
        self.connections = 0
        self.requests = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                _, _, seqid = codec._reader(body).read_message_begin()
                self.requests += 1
                if await self.respond(self.requests, seqid, writer) is False:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> "RawServer":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()


async def test_late_reply_never_reaches_next_call():
    async def respond(number, seqid, writer):
        if number == 1:
            await asyncio.sleep(0.3)  # past the client's timeout
        writer.write(http_response(health_reply(seqid, status=f"reply-{number}")))
        await writer.drain()

    async with RawServer(respond) as server:
        client = ThriftHttpClient(server.address)
        with pytest.raises(CallTimeout):
            await client.health(timeout_s=0.1)
        second = await client.health(timeout_s=2.0)
        assert second.status == "reply-2"
        assert server.connections == 2, "the timed-out connection was reused"
        await client.close()


async def test_stray_bytes_with_reply_fail_call():
    async def respond(number, seqid, writer):
        reply = http_response(health_reply(seqid, status=f"reply-{number}"))
        # The first reply carries an unasked-for second one in the same write.
        writer.write(reply + http_response(health_reply(seqid + 1000)) if number == 1 else reply)
        await writer.drain()

    async with RawServer(respond) as server:
        client = ThriftHttpClient(server.address)
        with pytest.raises(TransportError, match="bytes arrived after"):
            await client.health(timeout_s=2.0)
        assert (await client.health(timeout_s=2.0)).status == "reply-2"
        assert server.connections == 2, "the connection that carried stray bytes was reused"
        await client.close()


async def test_stray_bytes_on_idle_connection_close_it():
    async def respond(number, seqid, writer):
        writer.write(http_response(health_reply(seqid, status=f"reply-{number}")))
        await writer.drain()
        if number == 1:
            await asyncio.sleep(0.05)
            writer.write(http_response(health_reply(seqid + 1000, status="stray")))
            await writer.drain()

    async with RawServer(respond) as server:
        client = ThriftHttpClient(server.address)
        assert (await client.health(timeout_s=2.0)).status == "reply-1"
        await asyncio.sleep(0.2)  # the stray reply reaches the idle connection
        assert (await client.health(timeout_s=2.0)).status == "reply-2"
        assert server.connections == 2, "the idle connection that received stray bytes was reused"
        await client.close()


async def test_reply_of_other_call_is_violation():
    async def respond(number, seqid, writer):
        writer.write(http_response(health_reply(seqid + 1)))
        await writer.drain()

    async with RawServer(respond) as server:
        client = ThriftHttpClient(server.address)
        with pytest.raises(ProtocolViolation):
            await client.health(timeout_s=2.0)
        await client.close()


async def test_chunked_reply_is_transport_error():
    async def respond(number, seqid, writer):
        body = health_reply(seqid)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        await writer.drain()

    async with RawServer(respond) as server:
        client = ThriftHttpClient(server.address)
        with pytest.raises(TransportError, match="Transfer-Encoding"):
            await client.health(timeout_s=2.0)
        await client.close()


async def test_idle_close_is_retried_on_fresh_connection():
    async def respond(number, seqid, writer):
        writer.write(http_response(health_reply(seqid, status=f"reply-{number}")))
        await writer.drain()
        return False  # close after every reply, without saying so

    async with RawServer(respond) as server:
        client = ThriftHttpClient(server.address)
        assert (await client.health(timeout_s=2.0)).status == "reply-1"
        await asyncio.sleep(0.05)  # the server's close reaches the idle connection
        assert (await client.health(timeout_s=2.0)).status == "reply-2"
        assert server.connections == 2
        await client.close()


async def test_connection_close_header_is_honoured():
    async def respond(number, seqid, writer):
        writer.write(http_response(health_reply(seqid), "Connection: close"))
        await writer.drain()

    async with RawServer(respond) as server:
        client = ThriftHttpClient(server.address)
        for _ in range(3):
            await client.health(timeout_s=2.0)
        assert server.connections == 3
        await client.close()


async def test_keep_alive_reuses_one_connection():
    async def respond(number, seqid, writer):
        writer.write(http_response(health_reply(seqid)))
        await writer.drain()

    async with RawServer(respond) as server:
        client = ThriftHttpClient(server.address)
        for _ in range(5):
            await client.health(timeout_s=2.0)
        assert server.connections == 1
        await client.close()


async def test_pool_rejects_bad_status_line():
    async def respond(number, seqid, writer):
        writer.write(b"SPDY/3 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with RawServer(respond) as server:
        host, port = server.address.split(":")
        pool = Http1Pool(host, int(port), path="/thrift", content_type="application/x-thrift")
        with pytest.raises(MalformedResponse, match="status line"):
            await pool.post(codec.encode_call("health", 1))
        pool.close()

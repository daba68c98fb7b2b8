"""Thrift-over-HTTP server on aiohttp, shared by every tier.

Routes on one port: ``POST /thrift`` (binary-protocol calls), ``GET /healthz`` (liveness),
``GET /readyz`` (readiness: 200 or 503) and ``GET /metrics`` (Prometheus text format).

Contract:
- a malformed body, wrong method or message type gets a Thrift application exception (HTTP 200,
  as Thrift over HTTP does), never a crash; the connection is closed after such a reply;
- a predict call with a field sent in another wire type than the IDL's gets ``InvalidRequest``
  naming the field (thriftpy2 alone would drop the field silently);
- a body larger than ``max_body_bytes`` gets the method's typed ``InvalidRequest`` naming the
  limit when the header can be read, so a client never sees a bare 413;
- a predict call whose ``timeout_ms`` ran out while the server was still reading it is answered
  with ``DeadlineExceeded`` without reaching the handler, and counted;
- when the caller disconnects, its handler is cancelled (``cancel_on_disconnect``), so an L0 or
  L1 that gave up also stops the fan-out below it;
- ``stop()`` drains: readiness turns false first, calls keep being served for ``drain_grace_s``
  with ``Connection: close`` on every reply, then the listening socket and idle connections
  close, in-flight calls finish within ``drain_timeout_s`` and the rest are cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from thriftpy2.thrift import TApplicationException

from rpc import codec
from rpc.deadline import receiving_call
from rpc.idl import fmlite_thrift
from rpc.metrics import RpcMetrics
from rpc.ratelimit import RateLimitedLog

__all__ = ["CallDispatcher", "Handler", "ServerConfig", "ThriftHttpServer", "THRIFT_PATH", "CONTENT_TYPE", "too_large_message"]

logger = logging.getLogger(__name__)

THRIFT_PATH = "/thrift"
CONTENT_TYPE = "application/x-thrift"


class Handler(Protocol):
    """Interface a tier implements to be served."""

    tier: str

    async def predict(self, request: Any) -> Any: ...

    async def health(self) -> Any: ...

    def readiness(self) -> tuple[bool, str]:
        """Return (ready, status) where status is ok, degraded, loading or draining."""
        ...


@dataclass(frozen=True)
class ServerConfig:
    """Listening address and limits of one server process."""

    host: str = "127.0.0.1"
    port: int = 0
    # Largest accepted request body; sized by the caller from the glance-id and id-length limits.
    max_body_bytes: int = 2 << 20
    # Longest wait for in-flight calls after the listening socket closed; later ones are cancelled.
    drain_timeout_s: float = 10.0
    # Time between readiness turning false and the listening socket closing, while calls are still
    # served; set it above the callers' health-check interval (or the readiness probe period).
    drain_grace_s: float = 0.0
    # Cancel a call's handler when its caller disconnects.
    cancel_on_disconnect: bool = True
    # Maximum time for a framed-transport frame to arrive after its first byte. Past it the
    # connection closes, so a peer that stops mid-frame cannot keep a buffer open indefinitely.
    frame_read_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        if self.frame_read_timeout_s <= 0:
            raise ValueError(f"frame_read_timeout_s must be positive, got {self.frame_read_timeout_s}")
        if self.drain_timeout_s < 0 or self.drain_grace_s < 0:
            raise ValueError(f"drain_timeout_s and drain_grace_s must not be negative, got {self.drain_timeout_s}, {self.drain_grace_s}")


_EXCEPTION_FIELDS: dict[str, dict[type, str]] = {}
for _method in codec.METHODS:
    _result_cls = getattr(codec.SERVICE, f"{_method}_result")
    _fields = {}
    for _spec in _result_cls.thrift_spec.values():
        if _spec[1] != "success":
            _fields[_spec[2]] = _spec[1]
    _EXCEPTION_FIELDS[_method] = _fields


def too_large_message(what: str, limit: int) -> str:
    """Return the error text for a request of ``what`` (e.g. "request body") above ``limit`` bytes."""
    return (
        f"{what} exceeds {limit} bytes; at most "
        f"{fmlite_thrift.MAX_GLANCES_PER_REQUEST} glance ids of at most {fmlite_thrift.MAX_ID_BYTES} bytes each are accepted"
    )


class CallDispatcher:
    """Decode-to-reply steps shared by every transport: typed errors, deadline check, handler call.

    Each method returns a whole encoded reply message; the transport frames and sends it.
    """

    def __init__(self, handler: Handler, metrics: RpcMetrics, errors: RateLimitedLog):
        self.handler = handler
        self.metrics = metrics
        self._errors = errors

    def decode_error_reply(self, error: codec.DecodeError, peer: object) -> tuple[bytes, str, str]:
        """Return (reply, method, outcome) for a call body ``codec.decode_call`` rejected."""
        if isinstance(error, codec.FieldTypeError) and error.name == "predict":
            invalid = fmlite_thrift.InvalidRequest(message=str(error), field=error.field)
            reply = codec.encode_reply("predict", error.seqid, codec.SERVICE.predict_result(invalid=invalid))
            return reply, "predict", "InvalidRequest"
        self.metrics.malformed.inc()
        self._errors.warning("malformed call from %s: %s", peer, error)
        return codec.encode_application_error(error.name, error.seqid, error.kind, str(error)), "unknown", "malformed"

    def too_large_reply(self, prefix: bytes, message: str) -> bytes:
        """Return the reply to an oversized call whose first bytes are ``prefix``.

        A ``predict`` call whose message header can be read gets ``InvalidRequest`` naming
        ``glance_ids``; anything else gets a protocol-error application exception.
        """
        try:
            method, seqid, _ = codec.decode_call(prefix)
        except codec.DecodeError as error:
            method, seqid = error.name, error.seqid
        if method == "predict":
            result = codec.SERVICE.predict_result(invalid=fmlite_thrift.InvalidRequest(message=message, field="glance_ids"))
            return codec.encode_reply(method, seqid, result)
        return codec.encode_application_error(method, seqid, TApplicationException.PROTOCOL_ERROR, message)

    def _check_predict(self, args: Any, started: float) -> None:
        """Raise ``DeadlineExceeded`` when the call's budget ran out while it was read."""
        request = args.request
        timeout_ms = request.timeout_ms if request is not None else None
        if type(timeout_ms) is int and timeout_ms > 0:
            elapsed_ms = (time.monotonic() - started) * 1000.0
            if elapsed_ms >= timeout_ms:
                self.metrics.expired.inc()
                raise fmlite_thrift.DeadlineExceeded(
                    message=f"request {request.request_id or ''}: timeout_ms {timeout_ms} ran out after {elapsed_ms:.1f} ms "
                    "while the call was read; not computed"
                )

    async def dispatch(self, method: str, seqid: int, args: Any, started: float) -> tuple[bytes, str]:
        """Call the handler and return (reply, outcome); ``started`` is when reading the call began."""
        result = getattr(codec.SERVICE, f"{method}_result")()
        try:
            if method == "predict":
                self._check_predict(args, started)
                result.success = await self.handler.predict(args.request)
            else:
                result.success = await self.handler.health()
            outcome = "ok"
        except tuple(_EXCEPTION_FIELDS[method]) as error:
            setattr(result, _EXCEPTION_FIELDS[method][type(error)], error)
            outcome = type(error).__name__
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._errors.exception("%s.%s failed: %s", self.handler.tier, method, error)
            message = f"internal error in {self.handler.tier}.{method}: {type(error).__name__}: {error}"
            return codec.encode_application_error(method, seqid, TApplicationException.INTERNAL_ERROR, message), "internal_error"
        return codec.encode_reply(method, seqid, result), outcome


class ThriftHttpServer:
    """Serve a ``Handler`` over Thrift/HTTP with health, readiness and metrics routes."""

    def __init__(self, handler: Handler, config: ServerConfig, *, registry: CollectorRegistry | None = None):
        self.handler = handler
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = RpcMetrics(self.registry, tier=handler.tier)
        self.draining = False
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._in_flight = 0
        # Calls that finished, or were cancelled, after draining began.
        self._answered_while_draining = 0
        self._cancelled_while_draining = 0
        self._errors = RateLimitedLog(logger, interval_s=5.0)
        self.dispatcher = CallDispatcher(handler, self.metrics, self._errors)
        self.port: int | None = None

    def build_app(self) -> web.Application:
        # aiohttp's own limit sits above ours so that an oversized body reaches _read_body,
        # which returns a typed error instead of a bare 413.
        app = web.Application(client_max_size=self.config.max_body_bytes * 2 + 1024)
        app.router.add_post(THRIFT_PATH, self._thrift)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> int:
        """Start listening and return the bound port."""
        self._runner = web.AppRunner(
            self.build_app(),
            access_log=None,
            shutdown_timeout=self.config.drain_timeout_s,
            handle_signals=False,
            handler_cancellation=self.config.cancel_on_disconnect,
        )
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.config.host, self.config.port, reuse_address=True, backlog=1024)
        await self._site.start()
        sockets = self._site._server.sockets  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]
        logger.info("%s listening on %s:%d", self.handler.tier, self.config.host, self.port)
        return self.port

    @property
    def in_flight(self) -> int:
        """Calls being read or handled right now."""
        return self._in_flight

    async def stop(self) -> None:
        """Drain and stop: readiness false, grace period, stop accepting, wait for in-flight calls, close."""
        if self._runner is None:
            return
        self.draining = True
        config = self.config
        logger.info(
            "%s draining: %d calls in flight, grace %.1f s, timeout %.1f s",
            self.handler.tier, self._in_flight, config.drain_grace_s, config.drain_timeout_s,
        )
        started = time.monotonic()
        if config.drain_grace_s > 0:
            await asyncio.sleep(config.drain_grace_s)
        # Closes the listening socket and idle connections, waits up to drain_timeout_s for the
        # calls in progress, then cancels what is left.
        await self._runner.cleanup()
        self._runner = None
        logger.info(
            "%s stopped after %.2f s: %d calls answered while draining, %d cancelled at the drain timeout",
            self.handler.tier, time.monotonic() - started, self._answered_while_draining, self._cancelled_while_draining,
        )

    # ---- routes -----------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="live\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, status = self.handler.readiness()
        if self.draining:
            ready, status = False, "draining"
        return web.Response(text=f"{status}\n", status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _read_body(self, request: web.Request) -> tuple[bytes, bool]:
        """Read the whole body up to ``max_body_bytes``; return (body or its prefix, too_large)."""
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return await request.content.read(4096), True
        chunks: list[bytes] = []
        total = 0
        async for chunk in request.content.iter_any():
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                return b"".join(chunks)[:4096], True
        return b"".join(chunks), False

    async def _thrift(self, request: web.Request) -> web.StreamResponse:
        self._in_flight += 1
        started = time.monotonic()
        method, outcome = "unknown", "ok"
        try:
            body, too_large = await self._read_body(request)
            if too_large:
                method, outcome = "unknown", "invalid"
                return self._too_large(body)
            try:
                method, seqid, args = codec.decode_call(body)
            except codec.DecodeError as error:
                reply, method, outcome = self.dispatcher.decode_error_reply(error, request.remote)
                return web.Response(body=reply, content_type=CONTENT_TYPE, headers={"Connection": "close"})
            with receiving_call(started):
                reply, outcome = await self.dispatcher.dispatch(method, seqid, args, started)
            response = web.Response(body=reply, content_type=CONTENT_TYPE)
            if self.draining:
                # Tell the caller not to reuse this connection: the listening socket closes soon.
                response.force_close()
            return response
        except asyncio.CancelledError:
            outcome = "cancelled"
            if self.draining:
                self._cancelled_while_draining += 1
            raise
        finally:
            self._in_flight -= 1
            if self.draining and outcome != "cancelled":
                self._answered_while_draining += 1
            self.metrics.observe(method, outcome, time.monotonic() - started)

    def _too_large(self, prefix: bytes) -> web.Response:
        message = too_large_message("request body", self.config.max_body_bytes)
        reply = self.dispatcher.too_large_reply(prefix, message)
        return web.Response(body=reply, content_type=CONTENT_TYPE, headers={"Connection": "close"})

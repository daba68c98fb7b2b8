"""Open-loop load generator: offer a fixed request rate and time every request on the client.

Arrivals are a Poisson process at ``rate`` requests per second, seeded, so bursts happen the way
independent callers make them. A request's latency runs from its scheduled send time to the
moment its reply was read and decoded, so time a request waited for a free connection or for a
late event loop counts against the server (no coordinated omission). Requests scheduled during
the warm-up are sent but not recorded.

Request bodies are encoded before the run and sent over ``rpc.http1`` keep-alive connections:
the load generator's own CPU is not part of any figure, and it shares the machine's cores with
the servers, so it is kept small.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from rpc import codec
from rpc.client import parse_address
from rpc.http1 import Http1Pool
from rpc.idl import fmlite_thrift
from rpc.server import CONTENT_TYPE, THRIFT_PATH

__all__ = [
    "HttpStatusError",
    "LoadSpec",
    "LoadResult",
    "Target",
    "ThriftTarget",
    "RestTarget",
    "run_load",
    "encode_thrift_bodies",
    "encode_rest_bodies",
]

logger = logging.getLogger(__name__)

T = fmlite_thrift


@dataclass(frozen=True)
class LoadSpec:
    """Offered load of one measurement."""

    # Requests per second, Poisson arrivals.
    rate: float
    # Seconds of arrivals that are recorded, after the warm-up.
    duration_s: float
    # Seconds of arrivals sent before recording starts.
    warmup_s: float = 1.0
    # Connections (and so requests in flight) at most; later arrivals wait for one.
    max_in_flight: int = 64
    # Client-side bound of one request, waiting for a connection included.
    timeout_s: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration_s <= 0 or self.warmup_s < 0:
            raise ValueError(f"rate and duration_s must be positive and warmup_s not negative, got {self.rate}, {self.duration_s}, {self.warmup_s}")
        if self.max_in_flight < 1 or self.timeout_s <= 0:
            raise ValueError(f"max_in_flight and timeout_s must be positive, got {self.max_in_flight}, {self.timeout_s}")


@dataclass
class LoadResult:
    """Client-side figures of the recorded requests of one measurement."""

    spec: LoadSpec
    # Latency in milliseconds of every recorded request that succeeded.
    latencies_ms: np.ndarray
    # Recorded requests that failed, by exception type name.
    errors: Counter = field(default_factory=Counter)
    # Scores received by recorded requests that succeeded.
    predictions: int = 0
    # Seconds from the first recorded arrival to the last recorded reply.
    window_s: float = 0.0

    @property
    def sent(self) -> int:
        return len(self.latencies_ms) + self.error_count

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def percentile_ms(self, q: float) -> float:
        """Return the ``q``-th percentile of the raw latencies (nearest rank, no interpolation), or NaN."""
        if not len(self.latencies_ms):
            return float("nan")
        ordered = np.sort(self.latencies_ms)
        rank = max(1, int(np.ceil(q / 100.0 * len(ordered))))
        return float(ordered[rank - 1])

    @property
    def max_ms(self) -> float:
        return float(self.latencies_ms.max()) if len(self.latencies_ms) else float("nan")

    @property
    def predictions_per_second(self) -> float:
        return self.predictions / self.window_s if self.window_s > 0 else 0.0


class Target(Protocol):
    """One server endpoint and the pre-encoded requests the load generator sends it."""

    address: str

    def pool(self, limit: int) -> Http1Pool:
        """Return a connection pool to the endpoint with at most ``limit`` requests in flight."""
        ...

    async def send(self, pool: Http1Pool, index: int) -> int:
        """Send request ``index`` (modulo the body list) and return the number of scores in its reply."""
        ...


def encode_thrift_bodies(
    requests: Sequence[tuple[str, list[str]]], *, timeout_ms: int | None, variant: str | None = None
) -> list[tuple[bytes, int, int]]:
    """Return (body, sequence id, glance count) of a predict call per (user, glances) pair."""
    bodies = []
    for seqid, (user_id, glance_ids) in enumerate(requests, start=1):
        request = T.PredictRequest(
            user_id=user_id, glance_ids=glance_ids, request_id=f"load-{seqid}", timeout_ms=timeout_ms, variant=variant
        )
        bodies.append((codec.encode_call("predict", seqid, request=request), seqid, len(glance_ids)))
    return bodies


class HttpStatusError(RuntimeError):
    """The server replied with an HTTP status other than 200."""


class ThriftTarget:
    """A tier's ``POST /thrift`` endpoint, sent pre-encoded predict calls."""

    def __init__(self, address: str, bodies: Sequence[tuple[bytes, int, int]]):
        if not bodies:
            raise ValueError("ThriftTarget needs at least one request body")
        self.address = address
        self.host, self.port = parse_address(address)
        self.bodies = list(bodies)

    def pool(self, limit: int) -> Http1Pool:
        return Http1Pool(self.host, self.port, path=THRIFT_PATH, content_type=CONTENT_TYPE, limit=limit)

    async def send(self, pool: Http1Pool, index: int) -> int:
        body, seqid, count = self.bodies[index % len(self.bodies)]
        status, payload = await pool.post(body)
        if status != 200:
            raise HttpStatusError(f"HTTP {status}: {payload[:200]!r}")
        result = codec.decode_reply(payload, "predict", seqid)
        if len(result.scores) != count:
            raise ValueError(f"reply carries {len(result.scores)} scores for {count} glance ids")
        return count


def encode_rest_bodies(rows: Sequence[dict[str, np.ndarray]]) -> list[tuple[bytes, int]]:
    """Return (JSON body, row count) in TensorFlow Serving's REST row format, one body per input dict."""
    bodies = []
    for arrays in rows:
        names = list(arrays)
        columns = [arrays[name].tolist() for name in names]
        count = len(columns[0])
        instances = [{name: column[i] for name, column in zip(names, columns)} for i in range(count)]
        bodies.append((json.dumps({"instances": instances}).encode(), count))
    return bodies


class RestTarget:
    """A TensorFlow Serving style REST endpoint, ``POST /v1/models/<name>:predict``."""

    def __init__(self, address: str, bodies: Sequence[tuple[bytes, int]], *, model_name: str = "fmlite"):
        if not bodies:
            raise ValueError("RestTarget needs at least one request body")
        self.address = address
        self.host, self.port = parse_address(address)
        self.path = f"/v1/models/{model_name}:predict"
        self.bodies = list(bodies)

    def pool(self, limit: int) -> Http1Pool:
        return Http1Pool(self.host, self.port, path=self.path, content_type="application/json", limit=limit)

    async def send(self, pool: Http1Pool, index: int) -> int:
        body, count = self.bodies[index % len(self.bodies)]
        status, payload = await pool.post(body)
        if status != 200:
            raise HttpStatusError(f"HTTP {status}: {payload[:200]!r}")
        predictions = json.loads(payload)["predictions"]
        if len(predictions) != count:
            raise ValueError(f"reply carries {len(predictions)} predictions for {count} instances")
        return count


async def run_load(
    target: Target,
    spec: LoadSpec,
    *,
    on_window_start: Callable[[], None] | None = None,
    on_window_end: Callable[[], None] | None = None,
) -> LoadResult:
    """Offer ``spec``'s load to ``target`` and return the recorded requests' figures.

    ``on_window_start`` runs when the first recorded request is due and ``on_window_end`` once
    every recorded request has finished, so a caller can read CPU counters around exactly the
    recorded work.
    """
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(spec.seed)
    pool = target.pool(spec.max_in_flight)
    latencies: list[float] = []
    errors: Counter = Counter()
    predictions = 0
    slots = asyncio.Semaphore(spec.max_in_flight)

    async def one(index: int, scheduled: float, recorded: bool) -> None:
        nonlocal predictions
        try:
            async with asyncio.timeout(spec.timeout_s):
                async with slots:
                    count = await target.send(pool, index)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            if recorded:
                errors["ClientTimeout"] += 1
            return
        except Exception as error:  # every failure of a request is counted by its type
            if recorded:
                errors[type(error).__name__] += 1
                if errors[type(error).__name__] == 1:
                    logger.warning("request to %s failed: %s: %s", target.address, type(error).__name__, str(error)[:300])
            return
        if recorded:
            latencies.append((loop.time() - scheduled) * 1000.0)
            predictions += count

    try:
        tasks: list[asyncio.Task] = []
        started = loop.time()
        window_start = started + spec.warmup_s
        end = window_start + spec.duration_s
        scheduled = started
        window_started_at: float | None = None
        index = 0
        while True:
            scheduled += float(rng.exponential(1.0 / spec.rate))
            if scheduled >= end:
                break
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            recorded = scheduled >= window_start
            if recorded and window_started_at is None:
                window_started_at = scheduled
                if on_window_start is not None:
                    on_window_start()
            tasks.append(loop.create_task(one(index, scheduled, recorded)))
            index += 1
            if len(tasks) > 4096:
                tasks = [task for task in tasks if not task.done()]
        if window_started_at is None:
            window_started_at = loop.time()
            if on_window_start is not None:
                on_window_start()
        await asyncio.gather(*tasks)
        finished = loop.time()
        if on_window_end is not None:
            on_window_end()
    finally:
        pool.close()
    return LoadResult(
        spec=spec,
        latencies_ms=np.asarray(latencies, dtype=np.float64),
        errors=errors,
        predictions=predictions,
        window_s=max(finished - window_started_at, spec.duration_s),
    )


"""Open-loop load for the reliability tests: requests at a fixed rate, each checked against its expected reply.

Requests start on a fixed schedule whatever the latency of earlier ones (open loop), so a stall
shows up in the latency figures instead of slowing the load down. Every reply is checked: its
request id, its length and, when the template carries them, its scores, so a reply that belongs to
another request counts as a failure.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from rpc.client import ThriftHttpClient
from rpc.idl import fmlite_thrift as T

__all__ = ["RequestTemplate", "Outcome", "LoadResult", "run_load"]


@dataclass(frozen=True)
class RequestTemplate:
    """One request of the load and the scores it must return (None: not checked)."""

    user_id: str
    glance_ids: tuple[str, ...]
    expected_scores: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Outcome:
    """What happened to one request: seconds from the load's start, latency, and "ok" or the error."""

    started_s: float
    latency_s: float
    result: str
    response: Any = None


@dataclass
class LoadResult:
    """Outcomes of one load run, in the order the requests were sent."""

    description: str
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def failed(self) -> int:
        return sum(1 for outcome in self.outcomes if outcome.result != "ok")

    def errors(self) -> Counter:
        return Counter(outcome.result for outcome in self.outcomes if outcome.result != "ok")

    def error_kinds(self) -> Counter:
        """Count failures by error type (the text before the first colon)."""
        return Counter(outcome.result.split(":", 1)[0] for outcome in self.outcomes if outcome.result != "ok")

    def latency_ms(self, percentile: float) -> float:
        latencies = [outcome.latency_s for outcome in self.outcomes]
        return float(np.percentile(latencies, percentile) * 1000.0) if latencies else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "load": self.description,
            "sent": self.sent,
            "failed": self.failed,
            "errors": dict(self.error_kinds()),
            "first_error": next((o.result for o in self.outcomes if o.result != "ok"), "none"),
            "p50_ms": round(self.latency_ms(50), 1),
            "p99_ms": round(self.latency_ms(99), 1),
            "max_ms": round(self.latency_ms(100), 1),
        }


def _check(template: RequestTemplate, request_id: str, response: Any, score_tolerance: float) -> str:
    if response.request_id != request_id:
        return f"wrong request_id {response.request_id!r}"
    if len(response.scores) != len(template.glance_ids) or len(response.flags) != len(template.glance_ids):
        return f"{len(response.scores)} scores for {len(template.glance_ids)} ids"
    if template.expected_scores is not None:
        difference = np.max(np.abs(np.asarray(response.scores) - np.asarray(template.expected_scores)))
        if not difference <= score_tolerance:
            return f"scores differ from the expected ones by {difference:.3g}"
    return "ok"


async def run_load(
    address: str,
    templates: Sequence[RequestTemplate],
    *,
    rate_per_s: float,
    duration_s: float,
    timeout_ms: int,
    description: str,
    events: Sequence[tuple[float, Callable[[], None]]] = (),
    variant: str | None = None,
    score_tolerance: float = 1e-6,
    check: Callable[[RequestTemplate, Any], str] | None = None,
) -> LoadResult:
    """Send ``rate_per_s * duration_s`` requests to ``address`` on a fixed schedule and check every reply.

    ``events`` are (seconds after the start, function) pairs run on schedule, e.g. killing a
    leaf. ``check`` adds a test-specific check of each reply and returns "ok" or the reason.
    """
    client = ThriftHttpClient(address, pool_size=256)
    result = LoadResult(description)
    outcomes: list[Outcome | None] = [None] * int(rate_per_s * duration_s)
    started = time.monotonic()

    async def one(index: int) -> None:
        template = templates[index % len(templates)]
        request_id = f"load-{index}"
        request = T.PredictRequest(
            user_id=template.user_id, glance_ids=list(template.glance_ids), request_id=request_id, timeout_ms=timeout_ms, variant=variant
        )
        sent = time.monotonic()
        response = None
        try:
            response = await client.predict(request, timeout_s=timeout_ms / 1000.0 + 1.0)
            verdict = _check(template, request_id, response, score_tolerance)
            if verdict == "ok" and check is not None:
                verdict = check(template, response)
        except (T.InvalidRequest, T.Unavailable, T.DeadlineExceeded) as error:
            verdict = f"{type(error).__name__}: {error.message}"
        except Exception as error:  # every failure is recorded, none ends the load
            verdict = f"{type(error).__name__}: {error}"
        outcomes[index] = Outcome(sent - started, time.monotonic() - sent, verdict, response)

    async def fire(at_s: float, function: Callable[[], None]) -> None:
        await asyncio.sleep(max(0.0, started + at_s - time.monotonic()))
        function()

    event_tasks = [asyncio.create_task(fire(at_s, function)) for at_s, function in events]
    tasks = []
    try:
        for index in range(len(outcomes)):
            await asyncio.sleep(max(0.0, started + index / rate_per_s - time.monotonic()))
            tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
        await asyncio.gather(*event_tasks)
    finally:
        for task in (*tasks, *event_tasks):
            task.cancel()
        await client.close()
    result.outcomes = [outcome for outcome in outcomes if outcome is not None]
    return result

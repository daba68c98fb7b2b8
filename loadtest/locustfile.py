"""Locust load test of the L0 router: real Thrift predict calls over HTTP, ids from the trained artifacts.

Run headless from the repository root against a running L0 (``make up`` prints its address)::

    .venv/bin/python -m locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:9090 \\
        --users 4 --spawn-rate 4 --run-time 30s --fmlite-var var --fmlite-summary var/run/locust-summary.json

Every user sends ``predict`` calls of ``--fmlite-glances`` glance ids (1,000 by default) for users
and glances drawn from the published snapshot under ``--fmlite-var``, each carrying
``--fmlite-timeout-ms`` as its budget, at ``--fmlite-user-rate`` calls per second per user.

Latency gate: the p50/p99/max printed at the end and checked against ``--fmlite-p99-gate-ms``
come from raw client timings (one ``time.perf_counter`` difference per call, reply decoded),
never from locust's rounded percentiles. The L0's own Prometheus histogram
(``fmlite_request_seconds``, scraped before and after the run) is printed beside them as the
upper bound of the bucket that contains its p99. The process exits 1 when the client p99 is above the gate or
more than ``--fmlite-max-error-rate`` of the calls failed.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.request
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant_throughput, events, task
from prometheus_client.parser import text_string_to_metric_families

from rpc import codec
from rpc.idl import fmlite_thrift
from rpc.server import CONTENT_TYPE, THRIFT_PATH

logger = logging.getLogger(__name__)

T = fmlite_thrift
# Distinct request bodies; users cycle through them.
BODY_POOL = 256


class _Run:
    """State shared by every simulated user of this locust process."""

    bodies: list[tuple[bytes, int, int]] = []
    latencies_ms: list[float] = []
    errors: dict[str, int] = {}
    next_body = 0
    histogram_before: dict[float, float] = {}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--fmlite-var", default="var", help="artifact root whose profiles/ give the user and glance ids")
    parser.add_argument("--fmlite-glances", type=int, default=1000, help="glance ids per request")
    parser.add_argument("--fmlite-timeout-ms", type=int, default=50, help="timeout_ms carried by every request")
    parser.add_argument("--fmlite-variant", default="", help="variant asked for (default: the traffic split's)")
    parser.add_argument("--fmlite-user-rate", type=float, default=5.0, help="requests per second of each simulated user")
    parser.add_argument("--fmlite-p99-gate-ms", type=float, default=50.0, help="fail the run when the client p99 exceeds this")
    parser.add_argument("--fmlite-max-error-rate", type=float, default=0.01, help="fail the run when more calls than this share failed")
    parser.add_argument("--fmlite-summary", default="", help="write the run's figures as JSON to this file")


def _l0_histogram(host: str) -> dict[float, float]:
    """Return the L0's cumulative bucket counts of successful predict calls, by upper bound in seconds."""
    buckets: dict[float, float] = {}
    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/metrics", timeout=5.0) as response:
            text = response.read().decode()
    except OSError as error:
        logger.warning("could not read %s/metrics: %s", host, error)
        return buckets
    for family in text_string_to_metric_families(text):
        if family.name != "fmlite_request_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.name.endswith("_bucket") and labels.get("tier") == "l0" and labels.get("method") == "predict" and labels.get("outcome") == "ok":
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


def _histogram_p99_bound_ms(before: dict[float, float], after: dict[float, float]) -> float | None:
    """Return the upper bound (ms) of the bucket holding the p99 of the calls between two scrapes."""
    counts = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    if not counts or counts[-1][1] <= 0:
        return None
    total = counts[-1][1]
    for bound, cumulative in counts:
        if cumulative >= 0.99 * total:
            return bound * 1000.0
    return None


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[max(1, math.ceil(q / 100.0 * len(ordered))) - 1]


@events.test_start.add_listener
def _prepare(environment: Any, **_: Any) -> None:
    from loadtest.driver import encode_thrift_bodies
    from loadtest.workload import load_workload

    options = environment.parsed_options
    workload = load_workload(Path(options.fmlite_var) / "profiles")
    requests = workload.sample(count=BODY_POOL, glances_per_request=options.fmlite_glances, seed=3)
    _Run.bodies = encode_thrift_bodies(requests, timeout_ms=options.fmlite_timeout_ms, variant=options.fmlite_variant or None)
    _Run.latencies_ms = []
    _Run.errors = {}
    _Run.histogram_before = _l0_histogram(environment.host)
    logger.info("prepared %d predict bodies of %d glance ids from %s", len(_Run.bodies), options.fmlite_glances, options.fmlite_var)


@events.test_stop.add_listener
def _report(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    ordered = sorted(_Run.latencies_ms)
    failed = sum(_Run.errors.values())
    calls = len(ordered) + failed
    summary = {
        "source": "raw client timings",
        "calls": calls,
        "errors": failed,
        "error_kinds": dict(_Run.errors),
        "p50_ms": _percentile(ordered, 50),
        "p99_ms": _percentile(ordered, 99),
        "max_ms": ordered[-1] if ordered else float("nan"),
        "l0_histogram_p99_bound_ms": _histogram_p99_bound_ms(_Run.histogram_before, _l0_histogram(environment.host)),
        "glances_per_request": options.fmlite_glances,
    }
    too_slow = not ordered or summary["p99_ms"] > options.fmlite_p99_gate_ms
    too_many_errors = calls == 0 or failed > options.fmlite_max_error_rate * calls
    summary["gate_passed"] = not (too_slow or too_many_errors)
    print(
        f"fmlite raw client timings: {calls} calls, {failed} errors, p50 {summary['p50_ms']:.1f} ms, "
        f"p99 {summary['p99_ms']:.1f} ms, max {summary['max_ms']:.1f} ms; L0 histogram p99 <= "
        f"{summary['l0_histogram_p99_bound_ms']} ms; gate p99 <= {options.fmlite_p99_gate_ms:g} ms: "
        f"{'passed' if summary['gate_passed'] else 'FAILED'}",
        flush=True,
    )
    if options.fmlite_summary:
        Path(options.fmlite_summary).write_text(json.dumps(summary, indent=2) + "\n")
    if not summary["gate_passed"]:
        environment.process_exit_code = 1


class L0User(FastHttpUser):
    """One caller of the L0 router's predict method."""

    def wait_time(self) -> float:
        return constant_throughput(self.environment.parsed_options.fmlite_user_rate)(self)

    @task
    def predict(self) -> None:
        body, seqid, count = _Run.bodies[_Run.next_body % len(_Run.bodies)]
        _Run.next_body += 1
        started = time.perf_counter()
        with self.client.post(
            THRIFT_PATH, data=body, headers={"Content-Type": CONTENT_TYPE}, name="predict", catch_response=True
        ) as response:
            try:
                if response.status_code != 200:
                    raise RuntimeError(f"HTTP {response.status_code}")
                result = codec.decode_reply(response.content, "predict", seqid)
                if len(result.scores) != count:
                    raise RuntimeError(f"{len(result.scores)} scores for {count} glance ids")
            except Exception as error:  # every failed call is counted by its type and shown in locust's table
                kind = type(error).__name__
                _Run.errors[kind] = _Run.errors.get(kind, 0) + 1
                response.failure(f"{kind}: {str(error)[:200]}")
                return
            _Run.latencies_ms.append((time.perf_counter() - started) * 1000.0)
            response.success()

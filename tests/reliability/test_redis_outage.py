"""The Redis profile store stops, then accepts connections and never replies, then comes back, under load."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

from load_driver import RequestTemplate, run_load
from reliability_setup import DEADLINE_MS, GLANCES_PER_REQUEST, call, health
from server_processes import ProcessGroup, ServerProc
from store_platform import StorePlatform, publish_to_redis

from rpc.idl import fmlite_thrift as T

RATE = 20.0
STOP_AT_S = 2.0
SILENT_AT_S = 4.5
RECOVER_AT_S = 7.0
DURATION_S = 10.0


class ReadinessLog:
    """Readiness of a leaf sampled every 50 ms by a thread: (seconds, status, response time)."""

    def __init__(self, leaf: ServerProc):
        self.leaf = leaf
        self.samples: list[tuple[float, str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.started = time.monotonic()

    def _poll(self) -> None:
        while not self._stop.is_set():
            asked = time.monotonic()
            try:
                status, body = self.leaf.get("/readyz", timeout_s=5.0)
                text = f"{status} {body.strip()}"
            except OSError as error:
                text = f"error {error}"
            self.samples.append((asked - self.started, text, time.monotonic() - asked))
            self._stop.wait(0.05)

    def __enter__(self) -> "ReadinessLog":
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_redis_outage_under_load(procs: ProcessGroup, store_platform: StorePlatform, templates, figure_book):
    platform = store_platform
    redis = platform.redis
    serving = health(platform.leaves[0].address).profile_version
    # The scores before the outage: the leaves must keep returning exactly these from their cache.
    baseline = [
        RequestTemplate(t.user_id, t.glance_ids, tuple(call(platform.l1.address, T.PredictRequest(
            user_id=t.user_id, glance_ids=list(t.glance_ids), timeout_ms=5000)).scores))
        for t in templates
    ]
    phases: dict[str, object] = {}

    def go_silent() -> None:
        stats = platform.workdir / "redis-silent.stats"
        phases["silent"] = procs.fault("fault-redis-silent", "silent", "--port", str(redis.port), "--stats-file", str(stats))

    def restart() -> None:
        silent = phases["silent"]
        silent.signal(signal.SIGTERM)
        silent.wait_exit(10)
        redis.start_again()
        publish_to_redis(redis.url, platform.profiles_root, version=int(serving))
        phases["published_at"] = time.monotonic()

    recovery = threading.Thread(target=restart, daemon=True)
    with ReadinessLog(platform.leaves[0]) as readiness:
        result = asyncio.run(run_load(
            platform.l1.address, baseline, rate_per_s=RATE, duration_s=DURATION_S, timeout_ms=DEADLINE_MS,
            description=f"{RATE:.0f} req/s open loop via L1 over two leaves that read Redis, {GLANCES_PER_REQUEST} ids per request, "
            f"deadline {DEADLINE_MS} ms; Redis stopped after {STOP_AT_S} s, silent from {SILENT_AT_S} s, back from {RECOVER_AT_S} s",
            events=[(STOP_AT_S, redis.signal_stop), (SILENT_AT_S, go_silent), (RECOVER_AT_S, recovery.start)],
        ))
        recovery.join(timeout=60)
        recovered_at = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if all(leaf.get("/readyz")[1].strip() == "ok" for leaf in platform.leaves):
                recovered_at = time.monotonic()
                break
            time.sleep(0.1)

    assert result.failed == 0, f"{result.failed} of {result.sent} requests failed: {result.errors()}"
    assert result.latency_ms(99) < DEADLINE_MS
    outage = [text for at, text, _ in readiness.samples if STOP_AT_S + 1.0 < at < RECOVER_AT_S]
    assert outage, "no readiness sample during the outage"
    assert set(outage) == {"200 degraded"}, sorted(set(outage))
    slowest_probe_s = max(seconds for _, _, seconds in readiness.samples)
    assert slowest_probe_s < 1.0, f"a readiness probe took {slowest_probe_s:.2f} s"
    assert recovered_at is not None, "the leaves did not report ok within 15 s after Redis came back"
    figure_book.add(
        "Redis stopped, then silent, then back", **result.summary(),
        readiness_during_outage=sorted(set(outage)), slowest_readiness_probe_ms=round(slowest_probe_s * 1000, 1),
        seconds_to_ok_after_republish=round(recovered_at - phases["published_at"], 2),
        note="Leaves keep scoring from their local cache (the sample's users all fit) with the same scores as before, "
        "report ready with status degraded, and return to ok once Redis answers and holds the published version again. "
        "The leaves' Redis connect and socket timeouts are 100 ms.",
    )

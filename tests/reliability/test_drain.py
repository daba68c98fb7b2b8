"""SIGTERM under load in every tier: readiness turns false, accepted requests are answered, exit code 0."""

from __future__ import annotations

import asyncio
import signal

from load_driver import run_load
from reliability_setup import DEADLINE_MS, GLANCES_PER_REQUEST, Leaves, l1_arguments, start_l0
from server_processes import ProcessGroup

# After a leaf or an L1 drains, one replica takes the whole load: a rate it serves without
# saturating on a 2-core machine shared with every other process of the test.
RATE = 12.0
LOAD = f"{RATE:.0f} req/s open loop via L0, {GLANCES_PER_REQUEST} glance ids per request, deadline {DEADLINE_MS} ms"


def test_sigterm_leaf_under_load(procs: ProcessGroup, leaves: Leaves, spare_l1, templates, figure_book):
    l1 = procs.fmlite("l1-drain-leaf", *l1_arguments([leaves.a.address, leaves.draining.address]))
    procs.wait_ready([l1])
    l0 = start_l0(procs, "l0-drain-leaf", [l1.address], spare_l1.address)
    procs.wait_ready([l0])

    result = asyncio.run(run_load(
        l0.address, templates, rate_per_s=RATE, duration_s=7.0, timeout_ms=DEADLINE_MS,
        description=f"{LOAD}; SIGTERM to one of the shard's two leaves after 2 s",
        events=[(2.0, lambda: leaves.draining.signal(signal.SIGTERM))],
    ))

    assert leaves.draining.wait_exit(30) == 0
    assert result.failed == 0, f"{result.failed} of {result.sent} requests failed: {result.errors()}"
    log = leaves.draining.log_text()
    assert "draining" in log
    assert "closed its client pools" in log
    figure_book.add("leaf gets SIGTERM under load", **result.summary(), leaf_exit_code=0)


def test_sigterm_l1_under_load(procs: ProcessGroup, leaves: Leaves, spare_l1, templates, figure_book):
    l1s = [procs.fmlite(f"l1-drain-{name}", *l1_arguments([leaves.a.address, leaves.b.address])) for name in ("x", "y")]
    procs.wait_ready(l1s)
    l0 = start_l0(procs, "l0-drain-l1", [l1.address for l1 in l1s], spare_l1.address)
    procs.wait_ready([l0])

    result = asyncio.run(run_load(
        l0.address, templates, rate_per_s=RATE, duration_s=5.0, timeout_ms=DEADLINE_MS,
        description=f"{LOAD}; SIGTERM to one of the shard's two L1 controllers after 2 s",
        events=[(2.0, lambda: l1s[0].signal(signal.SIGTERM))],
    ))

    assert l1s[0].wait_exit(30) == 0
    assert result.failed == 0, f"{result.failed} of {result.sent} requests failed: {result.errors()}"
    figure_book.add("L1 gets SIGTERM under load", **result.summary(), l1_exit_code=0)


def test_sigterm_l0_answers_accepted_requests(procs: ProcessGroup, leaves: Leaves, spare_l1, templates, figure_book):
    # Every request spends 200 ms behind the stall, so L0 has calls in flight when the signal comes.
    stall = procs.fault("fault-drain", "stall", "--upstream", leaves.a.address, "--stall-ms", "200")
    procs.wait_ready([stall])
    l1 = procs.fmlite("l1-drain-l0", *l1_arguments([stall.address], "--no-hedging"))
    procs.wait_ready([l1])
    l0 = start_l0(procs, "l0-drained", [l1.address], spare_l1.address)
    procs.wait_ready([l0])
    signal_at = 1.5

    result = asyncio.run(run_load(
        l0.address, templates, rate_per_s=RATE, duration_s=3.0, timeout_ms=DEADLINE_MS,
        description=f"{LOAD}; every call stalls 200 ms at the leaf; SIGTERM to L0 after {signal_at} s",
        events=[(signal_at, lambda: l0.signal(signal.SIGTERM))],
    ))

    assert l0.wait_exit(30) == 0
    # Sent at least 50 ms before the signal: L0 had read these calls when it began to drain.
    accepted = [o for o in result.outcomes if o.started_s <= signal_at - 0.05]
    in_flight = [o for o in accepted if o.started_s + o.latency_s > signal_at]
    assert in_flight, "no request was in flight at the signal; the test did not exercise the drain"
    assert [o.result for o in accepted if o.result != "ok"] == []
    # Later requests may be refused (the socket is closed) but never get a wrong or partial reply.
    late = [o.result for o in result.outcomes if o.started_s > signal_at and o.result != "ok"]
    assert all(reason.startswith(("TransportError", "CallTimeout")) for reason in late), late
    log = l0.log_text()
    assert "calls answered while draining" in log
    figure_book.add(
        "L0 gets SIGTERM with calls in flight", **result.summary(), accepted_before_signal=len(accepted),
        in_flight_at_signal=len(in_flight), failed_among_accepted=0, refused_after_signal=len(late),
        l0_exit_code=0,
        note="L0 closes its listening socket at once (no drain grace), answers every call it had accepted and "
        "exits 0. Requests sent after the signal are refused; they are the failures counted here.",
    )

"""Deadlines: the budget travels L0 -> L1 -> leaf, and work whose deadline passed is dropped and counted."""

from __future__ import annotations

import http.client
import time

import pytest
from reliability_setup import Leaves, Profiles, call, l1_arguments, start_l0
from server_processes import ProcessGroup, metric_total

from rpc import codec
from rpc.idl import fmlite_thrift as T


@pytest.fixture(scope="module")
def stalled_path(procs: ProcessGroup, leaves: Leaves, spare_l1):
    """L0 -> L1 -> a leaf behind a 200 ms stall, with no retry, hedge or chunk timeout below the budget."""
    stall = procs.fault("fault-deadline", "stall", "--upstream", leaves.a.address, "--stall-ms", "200")
    procs.wait_ready([stall])
    l1 = procs.fmlite("l1-deadline", *l1_arguments([stall.address], "--chunk-timeout-ms", "5000", "--retries", "0", "--no-hedging"))
    procs.wait_ready([l1])
    l0 = start_l0(procs, "l0-deadline", [l1.address], spare_l1.address)
    procs.wait_ready([l0])
    return l0, l1, stall


def request(profiles: Profiles, timeout_ms: int, count: int = 50) -> T.PredictRequest:
    glance_ids = [str(g) for g in profiles.glances.ids[:count].tolist()]
    return T.PredictRequest(user_id=str(profiles.users.ids[0]), glance_ids=glance_ids, timeout_ms=timeout_ms)


def test_budget_shrinks_on_the_way_down(stalled_path, profiles: Profiles, leaves: Leaves):
    l0, l1, stall = stalled_path
    response = call(l0.address, request(profiles, 450))
    assert len(response.scores) == 50
    received = metric_total(stall.metrics(), "fault_last_timeout_ms")
    # What reached the leaf tier is the request's budget minus the time L0 and L1 spent on it.
    assert 0 < received < 450


def test_late_request_is_dropped_not_computed(stalled_path, profiles: Profiles, leaves: Leaves, figure_book):
    l0, l1, stall = stalled_path
    leaf_predictions = metric_total(leaves.a.metrics(), "fmlite_predictions_total")
    cancelled = metric_total(stall.metrics(), "fault_cancelled_calls_total")
    dropped = metric_total(l1.metrics(), "fmlite_deadline_dropped_total")

    started = time.monotonic()
    with pytest.raises(T.DeadlineExceeded):
        call(l0.address, request(profiles, 150))
    elapsed_ms = (time.monotonic() - started) * 1000

    # The caller hears back at its deadline, not after the 200 ms stall.
    assert elapsed_ms < 200
    assert metric_total(l1.metrics(), "fmlite_deadline_dropped_total") == dropped + 1
    # L1 abandoned the chunk call, the stalled server saw the cancellation, nothing was forwarded.
    deadline = time.monotonic() + 2
    while metric_total(stall.metrics(), "fault_cancelled_calls_total") == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric_total(stall.metrics(), "fault_cancelled_calls_total") == cancelled + 1
    time.sleep(0.3)
    assert metric_total(leaves.a.metrics(), "fmlite_predictions_total") == leaf_predictions
    figure_book.add(
        "request deadline shorter than a 200 ms leaf stall", load="single requests via L0, timeout_ms 150",
        sent=1, failed=1, p50_ms=round(elapsed_ms, 1), p99_ms=round(elapsed_ms, 1), max_ms=round(elapsed_ms, 1),
        note="The request fails with DeadlineExceeded at its deadline; L1 cancels the pending chunk call and counts "
        "the chunk as dropped, and the leaf never scores it.",
    )


@pytest.mark.parametrize("tier", ["l0", "l1", "leaf"])
def test_no_time_left_is_dropped_at_every_tier(stalled_path, profiles: Profiles, leaves: Leaves, tier: str):
    l0, l1, _ = stalled_path
    server = {"l0": l0, "l1": l1, "leaf": leaves.a}[tier]
    body = request(profiles, 0)
    body.variant = "fmlite"
    before = metric_total(server.metrics(), "fmlite_deadline_dropped_total", tier=tier)
    predictions = metric_total(leaves.a.metrics(), "fmlite_predictions_total")
    with pytest.raises(T.DeadlineExceeded):
        call(server.address, body)
    assert metric_total(server.metrics(), "fmlite_deadline_dropped_total", tier=tier) == before + 1
    assert metric_total(leaves.a.metrics(), "fmlite_predictions_total") == predictions


def test_budget_spent_while_reading_is_not_dispatched(stalled_path, profiles: Profiles, leaves: Leaves):
    _, l1, _ = stalled_path
    body = codec.encode_call("predict", 7, request=request(profiles, 50))
    expired_before = metric_total(l1.metrics(), "fmlite_expired_calls_total")
    predictions = metric_total(leaves.a.metrics(), "fmlite_predictions_total")
    host, port = l1.address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    connection.putrequest("POST", "/thrift")
    connection.putheader("Content-Type", "application/x-thrift")
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(message_body=body[:20])
    # The rest of the body arrives after the 50 ms budget is spent.
    time.sleep(0.15)
    connection.send(body[20:])
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    assert response.status == 200
    with pytest.raises(T.DeadlineExceeded, match="ran out"):
        codec.decode_reply(payload, "predict", 7)
    assert metric_total(l1.metrics(), "fmlite_expired_calls_total") == expired_before + 1
    assert metric_total(leaves.a.metrics(), "fmlite_predictions_total") == predictions

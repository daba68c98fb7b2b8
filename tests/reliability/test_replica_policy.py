"""Replica choice, ejection and the hedge budget, driven directly (no server needed for these decisions)."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry

from controller.hedging import HedgeConfig, HedgePolicy
from controller.metrics import ControllerMetrics
from controller.replicas import ReplicaPolicy, ReplicaSet, version_order

ADDRESSES = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]


def replica_set(**policy) -> ReplicaSet:
    metrics = ControllerMetrics(CollectorRegistry(), tier="l1")
    return ReplicaSet(ADDRESSES, name="test", policy=ReplicaPolicy(health_interval_s=0, **policy), metrics=metrics)


def test_slow_replica_gets_few_calls():
    random.seed(1)
    replicas = replica_set()
    slow, *fast = replicas.replicas.values()
    replicas.observe_success(slow, 0.200)
    for replica in fast:
        replicas.observe_success(replica, 0.005)
    chosen = [replicas.choose() for _ in range(300)]
    assert chosen.count(slow) == 0
    assert {r.address for r in chosen} == {r.address for r in fast}


def test_pending_call_age_raises_cost():
    random.seed(2)
    replicas = replica_set()
    stuck, *others = replicas.replicas.values()
    for replica in replicas.replicas.values():
        replicas.observe_success(replica, 0.005)
    token = replicas.begin_call(stuck)
    token[0] -= 0.5  # the call has been pending for half a second
    assert all(replicas.choose() is not stuck for _ in range(200))
    replicas.end_call(stuck, token)
    assert stuck.outstanding == 0


def test_consecutive_failures_eject_and_timeouts_do_not():
    replicas = replica_set(eject_after_failures=3)
    flaky = replicas.replicas[ADDRESSES[0]]
    for _ in range(5):
        replicas.observe_failure(flaky, 0.3, counts_toward_ejection=False)
    assert not flaky.ejected
    for _ in range(3):
        replicas.observe_failure(flaky, 0.001, counts_toward_ejection=True)
    assert flaky.ejected
    assert all(replicas.choose() is not flaky for _ in range(100))


def test_every_replica_ejected_fails_open():
    replicas = replica_set(eject_after_failures=1)
    for replica in replicas.replicas.values():
        replicas.observe_failure(replica, 0.001, counts_toward_ejection=True)
    assert not replicas.admitted
    assert replicas.choose() is not None


def test_exclude_never_falls_back_to_ejected():
    replicas = replica_set(eject_after_failures=1)
    first, second, third = replicas.replicas.values()
    replicas.observe_failure(third, 0.001, counts_toward_ejection=True)
    assert replicas.choose(exclude=[first, second]) is None


def test_version_preference_and_pinning():
    random.seed(3)
    replicas = replica_set()
    old, new_a, new_b = replicas.replicas.values()
    replicas.observe_success(old, 0.001, variant="fmlite", version=("1", "10"))
    replicas.observe_success(new_a, 0.005, variant="fmlite", version=("2", "10"))
    replicas.observe_success(new_b, 0.005, variant="fmlite", version=("2", "10"))
    # Most admitted replicas serve model 2, so it is preferred although the old replica is faster.
    assert all(replicas.choose(variant="fmlite") is not old for _ in range(100))
    assert replicas.choose(variant="fmlite", version=("1", "10")) is old
    assert replicas.choose(variant="cosine") is not None


def test_version_order_is_numeric():
    assert version_order(("10", "2")) > version_order(("9", "30"))
    assert version_order(("2", "builtin")) > version_order(("2", "100"))


def test_hedge_budget_caps_extra_calls():
    policy = HedgePolicy(HedgeConfig(budget=0.05, burst=10, min_samples=50))
    assert policy.delay_s() is None
    for latency in [0.005] * 95 + [0.050] * 5:
        policy.observe(latency)
    # Recomputed every 32 samples: the last time with only the fast ones in the window.
    assert policy.delay_s() == pytest.approx(0.005)
    granted = 0
    for _ in range(10_000):
        policy.add_calls(1)
        granted += policy.try_acquire()
    assert 0 < granted <= 0.05 * 10_000 + 10


def test_hedging_off_has_no_delay():
    policy = HedgePolicy(HedgeConfig(enabled=False, min_samples=1))
    for _ in range(100):
        policy.observe(0.01)
    assert policy.delay_s() is None

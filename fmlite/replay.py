"""Replay a logged day through a running L0 and score the served rankings against the clicks.

Each logged impression (one user, the candidate glances shown, which were peeked) becomes one
real predict request. The report gives client-side latency, MAP@10 per user (the user's
candidates of the day pooled and ranked by served score), mean AUC per impression (as MIND's
published figures are computed) and the counts of cold-start users and unknown glances.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ReplayReport", "replay_test_day", "replay_impressions", "held_out_day_impressions", "example_request"]


@dataclass
class ReplayReport:
    day: str
    requests: int = 0
    errors: int = 0
    users: int = 0
    positions: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    map_at_10: float = float("nan")
    map_users: int = 0
    auc: float = float("nan")
    auc_impressions: int = 0
    cold_start_users: int = 0
    unknown_glances: int = 0
    error_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def render(self) -> str:
        lines = [
            f"replay of {self.day}: {self.requests} requests for {self.users} users in {self.seconds:.1f} s, {self.errors} errors",
            f"  latency (client side): p50 {self.percentile(50):.1f} ms, p99 {self.percentile(99):.1f} ms, max {max(self.latencies_ms, default=float('nan')):.1f} ms",
            f"  MAP@10 {self.map_at_10:.4f} over {self.map_users} users with a click; "
            f"AUC {self.auc:.4f} (mean over {self.auc_impressions} impressions with clicks and non-clicks)",
            f"  cold-start users {self.cold_start_users}; unknown glances {self.unknown_glances} of {self.positions} positions "
            f"({self.unknown_glances / max(self.positions, 1):.1%}, scored with the fallback score)",
        ]
        lines += [f"  error: {example}" for example in self.error_examples[:5]]
        return "\n".join(lines)


@dataclass(frozen=True)
class Impression:
    impression_id: int
    user_id: str
    glance_ids: list[str]
    peeks: list[int]


def held_out_day_impressions(data: str | Path) -> tuple[str, list[Impression]]:
    """Return the held-out day of ``data`` (the pipeline's default windows) as impressions."""
    from model.config import PipelineConfig
    from model.dataset import load_test_day

    frame = load_test_day(PipelineConfig(data_dir=Path(data)))
    impressions = [
        Impression(int(row.impression_id), str(row.user_id), list(row.glance_ids), list(row.labels))
        for row in frame.itertuples(index=False)
    ]
    days = sorted({str(t.date()) for t in frame["time"]})
    if not days:
        label = "(no impressions)"
    elif len(days) == 1:
        label = days[0]
    else:
        label = f"{days[0]}..{days[-1]}"
    return label, impressions


async def replay_impressions(address: str, impressions: list[Impression], *, timeout_ms: int, concurrency: int = 8) -> tuple[list, ReplayReport]:
    """Send each impression to ``address`` and return (responses or errors, partial report)."""
    from rpc.framed import client_for
    from rpc.idl import fmlite_thrift as T

    client = client_for(address, pool_size=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    report = ReplayReport(day="")
    results: list = [None] * len(impressions)

    async def send(index: int, impression: Impression) -> None:
        request = T.PredictRequest(
            user_id=impression.user_id,
            glance_ids=impression.glance_ids,
            request_id=f"replay-{impression.impression_id}",
            timeout_ms=timeout_ms,
        )
        async with semaphore:
            started = time.perf_counter()
            try:
                results[index] = await client.predict(request, timeout_s=timeout_ms / 1000.0 + 0.5)
            except Exception as error:  # every failure is counted and reported, never dropped
                results[index] = error
                report.errors += 1
                if len(report.error_examples) < 5:
                    report.error_examples.append(f"impression {impression.impression_id}: {type(error).__name__}: {error}")
            report.latencies_ms.append((time.perf_counter() - started) * 1000.0)

    try:
        await asyncio.gather(*(send(i, imp) for i, imp in enumerate(impressions)))
    finally:
        await client.close()
    return results, report


def replay_test_day(*, address: str, data: str | Path, timeout_ms: int = 1000) -> ReplayReport:
    """Replay the held-out day of ``data`` through the L0 at ``address`` and return the report."""
    from model.metrics import auc, average_precision_at_k, mean_over_users

    chosen_day, impressions = held_out_day_impressions(data)
    started = time.perf_counter()
    results, report = asyncio.run(replay_impressions(address, impressions, timeout_ms=timeout_ms))
    report.seconds = time.perf_counter() - started
    report.day = chosen_day
    report.requests = len(impressions)
    report.users = len({imp.user_id for imp in impressions})

    per_user: dict[str, tuple[list[float], list[int]]] = {}
    aucs: list[float | None] = []
    cold_users: set[str] = set()
    for impression, result in zip(impressions, results):
        if isinstance(result, Exception) or result is None:
            continue
        report.positions += len(result.scores)
        report.unknown_glances += result.unknown_glances
        if result.cold_start_user:
            cold_users.add(impression.user_id)
        scores, labels = per_user.setdefault(impression.user_id, ([], []))
        scores.extend(result.scores)
        labels.extend(impression.peeks)
        aucs.append(auc(result.scores, impression.peeks))
    report.cold_start_users = len(cold_users)
    mapped = mean_over_users(average_precision_at_k(s, l, 10) for s, l in per_user.values())
    report.map_at_10, report.map_users = mapped.value, mapped.users
    auc_mean = mean_over_users(aucs)
    report.auc, report.auc_impressions = auc_mean.value, auc_mean.users
    return report


def example_request(var: str | Path, *, glances: int = 5) -> tuple[str, list[str]]:
    """Return a user id with a profile and a few glance ids from the published snapshot."""
    from fmlite import snapshot

    root = Path(var) / "profiles"
    version = snapshot.current_version(root)
    directory = root / str(version)
    manifest = snapshot.read_manifest(directory)
    users = snapshot.load_users(directory, 0, manifest, verify=False)
    table = snapshot.load_glances(directory, manifest, verify=False)
    user = str(users.ids[0]) if len(users) else "new-user"
    return user, [str(g) for g in table.ids[:glances]]

"""Chunk-size sweep: throughput with p99 latency capped, per chunk size and variant.

For every chunk size one L0 and one L1 per shard are started over the same leaves (the L1 splits
both variants' requests into chunks of that size). The offered rate then climbs step by step. A
step passes when its client-side p99 is at most the cap and at most 1% of its requests failed,
and the climb stops at the first step that does not pass. A point's throughput is what the last
passing step delivered, in predictions per second of wall time and per CPU-second.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from fmlite.launcher import ServerProcess
from loadtest.cluster import Cluster
from loadtest.driver import LoadSpec, ThriftTarget
from loadtest.measure import Measurement, format_rate, measure, rounded_rate

__all__ = ["SWEEP_CHUNK_SIZES", "SWEEP_VARIANTS", "P99_CAP_MS", "SweepPoint", "run_sweep", "sweep_table", "plot_sweep"]

logger = logging.getLogger(__name__)

SWEEP_CHUNK_SIZES = (25, 50, 100, 200, 400, 1000)
SWEEP_VARIANTS = ("fmlite", "cosine")
# Latency cap of the published throughput figures: p99 at most 50 ms.
P99_CAP_MS = 50.0
# Largest share of failed requests a passing step may have.
MAX_ERROR_RATE = 0.01


@dataclass(frozen=True)
class SweepPoint:
    """The best passing step of one (variant, chunk size), and every step tried."""

    variant: str
    chunk_size: int
    steps: tuple[Measurement, ...] = field(default_factory=tuple)
    p99_cap_ms: float = P99_CAP_MS

    @property
    def best(self) -> Measurement | None:
        passing = [step for step in self.steps if step_passes(step, self.p99_cap_ms)]
        return passing[-1] if passing else None

    def summary(self) -> dict[str, Any]:
        best = self.best
        return {
            "variant": self.variant,
            "chunk_size": self.chunk_size,
            "requests_per_second": best.rate if best else 0.0,
            "predictions_per_second": round(best.predictions_per_second, 1) if best else 0.0,
            "predictions_per_cpu_second": rounded_rate(best.predictions_per_cpu_second) if best else 0.0,
            "p99_ms": round(best.p99_ms, 2) if best else None,
            "p99_cap_ms": self.p99_cap_ms,
            "steps": [
                {"rate": s.rate, "p99_ms": round(s.p99_ms, 2), "errors": s.error_count, "requests": s.sent,
                 "predictions_per_cpu_second": rounded_rate(s.predictions_per_cpu_second)}
                for s in self.steps
            ],
        }


def _plotted(value: float | None) -> float:
    """Return ``value``, or NaN (a gap in the line) when it was not measured."""
    return value if value is not None else math.nan


def step_passes(step: Measurement, p99_cap_ms: float = P99_CAP_MS) -> bool:
    """Return True when the step's p99 is within the cap and few enough requests failed."""
    if step.sent == 0 or step.error_count > MAX_ERROR_RATE * step.sent:
        return False
    return step.p99_ms <= p99_cap_ms


def run_sweep(
    cluster: Cluster,
    leaves: Mapping[int, Sequence[ServerProcess]],
    bodies: Mapping[str, Sequence[tuple[bytes, int, int]]],
    *,
    chunk_sizes: Sequence[int] = SWEEP_CHUNK_SIZES,
    rates: Sequence[float],
    step_s: float,
    warmup_s: float,
    glances_per_request: int,
    l1_arguments: Sequence[str] = (),
    p99_cap_ms: float = P99_CAP_MS,
) -> list[SweepPoint]:
    """Climb the offered rate for every chunk size and every variant in ``bodies``; return one point each."""
    points: list[SweepPoint] = []
    for chunk_size in chunk_sizes:
        group = cluster.start_group(
            leaves, tag=f"sweep{chunk_size}", chunk_size=chunk_size, cosine_chunk_size=chunk_size, l1_arguments=l1_arguments
        )
        try:
            for variant, variant_bodies in bodies.items():
                target = ThriftTarget(group.address, variant_bodies)
                steps: list[Measurement] = []
                for rate in rates:
                    spec = LoadSpec(rate=rate, duration_s=step_s, warmup_s=warmup_s, seed=len(steps))
                    step = measure(f"{variant} chunk {chunk_size}", target, spec, group.servers, glances_per_request=glances_per_request)
                    steps.append(step)
                    if not step_passes(step, p99_cap_ms):
                        break
                points.append(SweepPoint(variant=variant, chunk_size=chunk_size, steps=tuple(steps), p99_cap_ms=p99_cap_ms))
        finally:
            cluster.stop([group.l0, *group.l1s])
    return points


def sweep_table(points: Sequence[SweepPoint]) -> str:
    """Return a Markdown table: one row per chunk size, throughput of each variant with p99 capped.

    Where no step passed, the first step's figures are shown and marked, so the CPU cost per
    prediction of every chunk size stays visible on a machine too busy for the cap.
    """
    variants = list(dict.fromkeys(point.variant for point in points))
    by_key = {(point.variant, point.chunk_size): point for point in points}
    header = ["chunk size"]
    for variant in variants:
        header += [f"{variant} req/s", f"{variant} predictions/s", f"{variant} predictions/CPU-s", f"{variant} p99 ms"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for chunk_size in sorted({point.chunk_size for point in points}):
        row = [str(chunk_size)]
        for variant in variants:
            point = by_key.get((variant, chunk_size))
            best = point.best if point else None
            if best is None and point is not None and point.steps:
                first = point.steps[0]
                failed = f"none passed (at {first.rate:g} req/s: {first.error_count}/{first.sent} failed, p99 {first.p99_ms:.0f} ms)"
                row += [failed, f"{first.predictions_per_second:,.0f}", format_rate(first.predictions_per_cpu_second), "-"]
            elif best is None:
                row += ["none passed", "-", "-", "-"]
            else:
                row += [f"{best.rate:g}", f"{best.predictions_per_second:,.0f}", format_rate(best.predictions_per_cpu_second), f"{best.p99_ms:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(points: Sequence[SweepPoint], path: Path, *, title: str) -> None:
    """Write a PNG against chunk size: throughput with p99 capped (left), CPU efficiency at the first step (right).

    The right panel uses the first, lowest-rate step of every point, which exists even when no
    step met the cap, so it shows the CPU cost per prediction of each chunk size in any run.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (wall, cpu) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant in dict.fromkeys(point.variant for point in points):
        mine = sorted((p for p in points if p.variant == variant), key=lambda p: p.chunk_size)
        sizes = [p.chunk_size for p in mine]
        wall.plot(sizes, [p.best.predictions_per_second if p.best else 0.0 for p in mine], marker="o", label=variant)
        cpu.plot(sizes, [_plotted(p.steps[0].predictions_per_cpu_second) if p.steps else 0.0 for p in mine], marker="o", label=variant)
    for axis, label in ((wall, "predictions per second"), (cpu, "predictions per CPU-second")):
        axis.set_xscale("log")
        axis.set_xticks(list(SWEEP_CHUNK_SIZES), [str(size) for size in SWEEP_CHUNK_SIZES])
        axis.set_xlabel("leaf chunk size (glances per leaf call)")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        axis.legend()
    cap = points[0].p99_cap_ms if points else P99_CAP_MS
    wall.set_title(f"throughput at p99 <= {cap:g} ms")
    first_rate = points[0].steps[0].rate if points and points[0].steps else 0.0
    cpu.set_title(f"CPU efficiency at {first_rate:g} requests per second")
    for axis in (wall, cpu):
        axis.set_ylim(bottom=0)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)

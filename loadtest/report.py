"""Text, JSON and Markdown output of a benchmark run, and the run's provenance (commit, cores)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from loadtest.kernel import KernelTiming
from loadtest.measure import Measurement, format_rate
from loadtest.sweep import SweepPoint, sweep_table

__all__ = ["CONFIGURATIONS", "Provenance", "provenance", "BenchReport"]

# JSON key and description of each configuration, in the order they are run and printed.
CONFIGURATIONS = {
    "platform": "1 platform, default runner",
    "platform_savedmodel": "2 platform, in-process SavedModel",
    "rpc_floor": "3 platform, constant-score leaf",
    "features_in_body": "4 REST, features in the body",
}

# Targets of the published serving figures, checked on every run.
TARGET_PREDICTIONS_PER_CPU_SECOND = 150_000
TARGET_P99_MS = 50.0
TARGET_FLOOR_SHARE = 0.6
TARGET_PEER_FACTOR = 5.0
TARGET_KERNEL_SPEEDUP = 5.0


def _chunk(found: Measurement) -> str:
    return f"{found.mean_chunk_size:.0f}" if found.mean_chunk_size is not None else "-"


@dataclass(frozen=True)
class Provenance:
    """Commit, dirty tree, cores, load average and start time of a run."""

    commit: str
    dirty: bool
    cores: int
    load_average: tuple[float, float, float]
    python: str
    started: str

    def line(self) -> str:
        dirty = " (uncommitted changes)" if self.dirty else ""
        load = ", ".join(f"{value:.1f}" for value in self.load_average)
        return f"commit {self.commit}{dirty}, {self.cores} cores, load average {load} at start, Python {self.python}, {self.started}"


def provenance(repository: Path) -> Provenance:
    """Read the commit and machine facts of a run started now."""

    def git(*arguments: str) -> str:
        try:
            return subprocess.run(["git", *arguments], cwd=repository, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return Provenance(
        commit=git("rev-parse", "--short", "HEAD") or "unknown",
        dirty=bool(git("status", "--porcelain", "--untracked-files=no")),
        cores=os.cpu_count() or 0,
        load_average=os.getloadavg(),
        python=platform.python_version(),
        started=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


@dataclass(frozen=True)
class BenchReport:
    """Everything one ``fmlite bench`` run measured."""

    provenance: Provenance
    measurements: Mapping[str, Measurement]
    kernel: KernelTiming | None
    sweep: Sequence[SweepPoint]
    settings: Mapping[str, Any]

    def ratios(self) -> dict[str, float | None]:
        def per_cpu(key: str) -> float | None:
            found = self.measurements.get(key)
            return found.predictions_per_cpu_second if found is not None else None

        platform_rate, floor_rate, peer_rate = per_cpu("platform"), per_cpu("rpc_floor"), per_cpu("features_in_body")
        return {
            "platform_over_rpc_floor": platform_rate / floor_rate if platform_rate and floor_rate else None,
            "platform_over_features_in_body": platform_rate / peer_rate if platform_rate and peer_rate else None,
        }

    def target_lines(self) -> list[str]:
        """Return one line per target: the figure, the target and whether this run met it."""
        lines = []
        platform = self.measurements.get("platform")
        ratios = self.ratios()

        def verdict(ok: bool) -> str:
            return "met" if ok else "NOT met"

        if platform is not None:
            rate = platform.predictions_per_cpu_second
            ok = rate is not None and rate >= TARGET_PREDICTIONS_PER_CPU_SECOND and platform.p99_ms <= TARGET_P99_MS and not platform.error_count
            lines.append(
                f"platform: {format_rate(rate)} predictions/CPU-s at p99 {platform.p99_ms:.1f} ms, "
                f"{platform.error_count} errors (target >= {TARGET_PREDICTIONS_PER_CPU_SECOND:,} at p99 <= {TARGET_P99_MS:g} ms, no errors): {verdict(ok)}"
            )
        if ratios["platform_over_rpc_floor"] is not None:
            value = ratios["platform_over_rpc_floor"]
            lines.append(f"platform / RPC floor: {value:.2f} (target >= {TARGET_FLOOR_SHARE}): {verdict(value >= TARGET_FLOOR_SHARE)}")
        if ratios["platform_over_features_in_body"] is not None:
            value = ratios["platform_over_features_in_body"]
            lines.append(f"platform / features in body: {value:.1f}x (target >= {TARGET_PEER_FACTOR:g}x): {verdict(value >= TARGET_PEER_FACTOR)}")
        if self.kernel is not None:
            value = self.kernel.speedup
            lines.append(
                f"leaf scoring step on {self.kernel.chunk_size} glances: NumPy {self.kernel.numpy_us:.0f} us, SavedModel "
                f"{self.kernel.savedmodel_us:.0f} us CPU, {value:.1f}x (target >= {TARGET_KERNEL_SPEEDUP:g}x): {verdict(value >= TARGET_KERNEL_SPEEDUP)}"
            )
        return lines

    def table(self) -> str:
        """Return the configurations side by side as aligned text."""
        header = ("configuration", "offered", "pred/CPU-s", "p50 ms", "p99 ms", "max ms", "errors", "requests", "chunk", "CPU-s (L0/L1/leaf/REST)")
        rows = [header]
        for key, description in CONFIGURATIONS.items():
            found = self.measurements.get(key)
            if found is None:
                continue
            tiers = found.cpu_by_tier()
            split = "/".join(f"{tiers.get(tier, 0.0):.2f}" for tier in ("l0", "l1", "leaf", "rest"))
            rows.append((
                description, f"{found.rate:g} req/s", format_rate(found.predictions_per_cpu_second), f"{found.p50_ms:.1f}",
                f"{found.p99_ms:.1f}", f"{found.max_ms:.1f}", str(found.error_count), str(found.sent), _chunk(found), split,
            ))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {key: found.summary() for key, found in self.measurements.items()}
        document["leaf_kernel_speedup"] = round(self.kernel.speedup, 2) if self.kernel is not None else None
        if self.kernel is not None:
            document["leaf_kernel_us"] = {"chunk_size": self.kernel.chunk_size, "numpy": round(self.kernel.numpy_us, 1),
                                          "savedmodel": round(self.kernel.savedmodel_us, 1),
                                          "max_abs_difference": self.kernel.max_abs_difference}
        document["ratios"] = {name: (round(value, 3) if value is not None else None) for name, value in self.ratios().items()}
        document["sweep"] = [point.summary() for point in self.sweep]
        document["settings"] = dict(self.settings)
        document["commit"] = self.provenance.commit
        document["dirty"] = self.provenance.dirty
        document["cores"] = self.provenance.cores
        document["load_average"] = list(self.provenance.load_average)
        return document

    def json_line(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))

    def markdown(self) -> str:
        """Return a Markdown section recording this run (for ``docs/benchmarks.md``)."""
        settings = ", ".join(f"{key} {value}" for key, value in self.settings.items())
        parts = [
            f"### Run of {self.provenance.started}",
            "",
            f"{self.provenance.line()}. Settings: {settings}.",
            "",
            "| configuration | offered | predictions/CPU-s | p50 ms | p99 ms | max ms | errors | requests | mean chunk | CPU-s L0/L1/leaf/REST |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, description in CONFIGURATIONS.items():
            found = self.measurements.get(key)
            if found is None:
                continue
            tiers = found.cpu_by_tier()
            split = "/".join(f"{tiers.get(tier, 0.0):.2f}" for tier in ("l0", "l1", "leaf", "rest"))
            parts.append(
                f"| {description} | {found.rate:g} req/s | {format_rate(found.predictions_per_cpu_second)} | {found.p50_ms:.1f} | "
                f"{found.p99_ms:.1f} | {found.max_ms:.1f} | {found.error_count} | {found.sent} | {_chunk(found)} | {split} |"
            )
        parts += ["", *[f"- {line}" for line in self.target_lines()], ""]
        if self.sweep:
            parts += [f"Chunk-size sweep (throughput with p99 capped at {self.sweep[0].p99_cap_ms:g} ms):", "", sweep_table(self.sweep)]
        return "\n".join(parts) + "\n"

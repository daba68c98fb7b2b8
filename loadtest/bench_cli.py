"""Command-line side of ``fmlite bench``: options from parsed arguments, printed table, JSON line, record.

The options themselves are declared in ``fmlite.cli`` so that building the parser imports nothing
from here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from loadtest.bench import BenchError, BenchOptions, run_bench
from loadtest.sweep import sweep_table

__all__ = ["run_bench_command"]

logger = logging.getLogger(__name__)


def _numbers(text: str, kind: type) -> tuple:
    try:
        values = tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise BenchError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(value <= 0 for value in values):
        raise BenchError(f"expected positive comma-separated numbers, got {text!r}")
    return values


def _options(args: argparse.Namespace) -> BenchOptions:
    overrides: dict[str, object] = {}
    simple = {
        "rate": "rate", "rest_rate": "rest_rate", "duration_s": "duration_s", "warmup_s": "warmup_s",
        "glances": "glances_per_request", "leaves_per_shard": "leaves_per_shard", "chunk_size": "chunk_size",
        "timeout_ms": "timeout_ms", "sweep_step_s": "sweep_step_s", "sweep_p99_cap_ms": "sweep_p99_cap_ms",
    }
    for argument, option in simple.items():
        value = getattr(args, argument)
        if value is not None:
            overrides[option] = value
    if args.configurations:
        overrides["configurations"] = tuple(name.strip() for name in args.configurations.split(",") if name.strip())
    if args.sweep_chunk_sizes:
        overrides["sweep_chunk_sizes"] = _numbers(args.sweep_chunk_sizes, int)
    if args.sweep_variants:
        overrides["sweep_variants"] = tuple(name.strip() for name in args.sweep_variants.split(",") if name.strip())
    if args.sweep_rates:
        overrides["sweep_rates"] = _numbers(args.sweep_rates, float)
    overrides["kernel"] = not args.no_kernel
    overrides["sweep"] = not args.no_sweep
    overrides["l1_arguments"] = tuple(args.l1_arg)
    for name in ("plot", "table", "workdir"):
        value = getattr(args, name)
        if value:
            overrides[name] = Path(value)
    var = Path(args.var)
    if args.quick:
        return BenchOptions.quick_defaults(var, **overrides)
    return BenchOptions(var=var, **overrides)


def run_bench_command(args: argparse.Namespace) -> int:
    """Run ``fmlite bench`` with parsed ``args``; return the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        options = _options(args)
        report = run_bench(options)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"# {report.provenance.line()}")
    print(report.table())
    for line in report.target_lines():
        print(line)
    if report.sweep:
        print()
        print(f"chunk-size sweep, throughput with p99 capped at {report.sweep[0].p99_cap_ms:g} ms:")
        print(sweep_table(report.sweep), end="")
    if args.record:
        path = Path(args.record)
        with path.open("a") as stream:
            stream.write("\n" + report.markdown())
        print(f"recorded in {path}")
    if args.json:
        print(report.json_line())
    return 0


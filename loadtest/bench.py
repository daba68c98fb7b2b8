"""``fmlite bench``: the platform and its peers under the same offered load, side by side.

Configurations, each started on 127.0.0.1 from the trained artifacts under ``var``:

1. ``platform``: L0, one L1 per shard and leaves with the leaf's default runner (NumPy);
2. ``platform_savedmodel``: the same with leaves that run the SavedModel in process;
3. ``rpc_floor``: the same with leaves that return a constant score (``loadtest.floor_leaf``);
4. ``features_in_body``: one process taking TensorFlow Serving's REST predict format, the feature
   vectors looked up by the client and sent in the body (``loadtest.rest_peer``).

Each configuration gets the same open-loop Poisson load (configuration 4 a lower one, since it
cannot carry the others'), and its figures are predictions per CPU-second, summed over every
server process from ``/proc``, and client-side p50/p99/max latency from raw timings. The leaf's
scoring step is timed in process against the SavedModel call on the same 100-glance chunk, and
a chunk-size sweep measures throughput with p99 capped at 50 ms for FM-Lite and the cosine
baseline.
"""

from __future__ import annotations

import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from fmlite.launcher import ServerProcess
from loadtest.cluster import Cluster
from loadtest.driver import LoadSpec, RestTarget, ThriftTarget, encode_rest_bodies, encode_thrift_bodies
from loadtest.kernel import KernelTiming, time_leaf_kernels
from loadtest.measure import Measurement, mean_chunk_size, measure
from loadtest.report import CONFIGURATIONS, BenchReport, provenance
from loadtest.sweep import P99_CAP_MS, SWEEP_CHUNK_SIZES, SWEEP_VARIANTS, plot_sweep, run_sweep, sweep_table
from loadtest.workload import DEFAULT_GLANCES_PER_REQUEST, load_workload

__all__ = ["BenchError", "BenchOptions", "run_bench"]

logger = logging.getLogger(__name__)

REPOSITORY = Path(__file__).resolve().parents[1]
# Distinct request bodies per configuration; requests cycle through them.
THRIFT_POOL = 256
# REST bodies carry every feature vector (about 19 MB for 1,000 glances), so fewer are built.
REST_POOL = 4


class BenchError(RuntimeError):
    """The benchmark could not run: missing artifacts or an invalid option."""


@dataclass(frozen=True)
class BenchOptions:
    """Settings of one benchmark run; ``quick`` shortens every phase so a run takes a few minutes."""

    var: Path
    quick: bool = False
    # Offered load of configurations 1 to 3, requests per second.
    rate: float = 20.0
    # Offered load of configuration 4, requests per second.
    rest_rate: float = 0.5
    duration_s: float = 20.0
    warmup_s: float = 3.0
    glances_per_request: int = DEFAULT_GLANCES_PER_REQUEST
    leaves_per_shard: int = 1
    chunk_size: int = 100
    cosine_chunk_size: int = 400
    # timeout_ms carried by every request: the platform's default budget.
    timeout_ms: int = 50
    configurations: tuple[str, ...] = tuple(CONFIGURATIONS)
    kernel: bool = True
    sweep: bool = True
    sweep_chunk_sizes: tuple[int, ...] = SWEEP_CHUNK_SIZES
    sweep_variants: tuple[str, ...] = SWEEP_VARIANTS
    sweep_rates: tuple[float, ...] = (10.0, 20.0, 40.0, 60.0, 80.0, 120.0, 160.0)
    sweep_step_s: float = 6.0
    sweep_warmup_s: float = 1.5
    # Client-side p99 a sweep step may have; the published figures use 50 ms.
    sweep_p99_cap_ms: float = P99_CAP_MS
    # Extra options of every L1 (serve-l1 flags).
    l1_arguments: tuple[str, ...] = ()
    plot: Path | None = None
    table: Path | None = None
    workdir: Path | None = None

    def __post_init__(self) -> None:
        unknown = [name for name in self.configurations if name not in CONFIGURATIONS]
        if unknown:
            raise BenchError(f"unknown configurations {unknown}; expected some of {list(CONFIGURATIONS)}")
        if self.rate <= 0 or self.rest_rate <= 0 or self.duration_s <= 0 or self.warmup_s < 0:
            raise BenchError(f"rates and duration must be positive, warm-up not negative; got {self.rate}, {self.rest_rate}, {self.duration_s}, {self.warmup_s}")
        if not 1 <= self.glances_per_request <= 10_000:
            raise BenchError(f"glances per request must be in 1..10000 (the request limit), got {self.glances_per_request}")
        if self.leaves_per_shard < 1:
            raise BenchError(f"leaves per shard must be at least 1, got {self.leaves_per_shard}")
        unknown_variants = [v for v in self.sweep_variants if v not in SWEEP_VARIANTS]
        if unknown_variants:
            raise BenchError(f"unknown sweep variants {unknown_variants}; expected some of {list(SWEEP_VARIANTS)}")

    @classmethod
    def quick_defaults(cls, var: Path, **overrides: object) -> "BenchOptions":
        """Return options for a run of a few minutes: short windows, a two-step sweep."""
        quick = dict(quick=True, duration_s=5.0, warmup_s=1.5, sweep_rates=(20.0, 40.0), sweep_step_s=2.5, sweep_warmup_s=0.5)
        quick.update(overrides)
        return cls(var=var, **quick)

    @property
    def profiles(self) -> Path:
        return self.var / "profiles"

    @property
    def model_base(self) -> Path:
        return self.var / "models" / "fmlite"


def _default_runner() -> str:
    """Return the runner a leaf uses when its config names none."""
    from leaf.service import LeafConfig

    return LeafConfig.__dataclass_fields__["runner"].default


def _check_artifacts(options: BenchOptions) -> None:
    if not (options.profiles / "CURRENT").exists():
        raise BenchError(f"no published profile snapshot under {options.profiles}; run `fmlite train --out {options.var}` first")
    if not options.model_base.is_dir() or not any(p.name.isdigit() for p in options.model_base.iterdir()):
        raise BenchError(f"no FM-Lite model version under {options.model_base}; run `fmlite train --out {options.var}` first")


class _Run:
    """State of one benchmark run: its servers, requests and figures so far."""

    def __init__(self, options: BenchOptions):
        self.options = options
        self.origin = provenance(REPOSITORY)
        self.workdir = options.workdir or Path(tempfile.mkdtemp(prefix="fmlite-bench-"))
        self.cluster = Cluster(self.workdir)
        self.workload = load_workload(options.profiles)
        self.num_shards = self.workload.manifest.num_shards
        self.requests = self.workload.sample(count=THRIFT_POOL, glances_per_request=options.glances_per_request, seed=1)
        self.leaf_kinds = {"platform": _default_runner(), "platform_savedmodel": "savedmodel", "rpc_floor": "constant"}
        self.leaves: dict[str, dict[int, list[ServerProcess]]] = {}
        self.measurements: dict[str, Measurement] = {}
        self.kernel: KernelTiming | None = None
        self.sweep_points: list = []
        self.started = time.monotonic()

    def start_leaves(self) -> None:
        """Start the leaves of every configuration that needs them, without waiting."""
        options = self.options
        needed = [key for key in options.configurations if key in self.leaf_kinds]
        if options.sweep and "platform" not in needed:
            needed.insert(0, "platform")
        for key in needed:
            self.leaves[key] = self.cluster.start_leaves(
                kind=self.leaf_kinds[key], profiles=options.profiles, models={"fmlite": options.model_base},
                shards=self.num_shards, leaves_per_shard=options.leaves_per_shard, tag=key, wait=False,
            )

    def measure_platforms(self, spec: LoadSpec) -> None:
        """Measure configurations 1 to 3, one L0 and L1 group at a time over their own leaves."""
        options = self.options
        bodies = encode_thrift_bodies(self.requests, timeout_ms=options.timeout_ms)
        for key in CONFIGURATIONS:
            if key not in options.configurations or key not in self.leaf_kinds:
                continue
            group = self.cluster.start_group(
                self.leaves[key], tag=key, chunk_size=options.chunk_size, cosine_chunk_size=options.cosine_chunk_size,
                l1_arguments=options.l1_arguments,
            )
            try:
                found = measure(key, ThriftTarget(group.address, bodies), spec, group.servers, glances_per_request=options.glances_per_request)
                self.measurements[key] = replace(found, mean_chunk_size=mean_chunk_size(group.l1s))
            finally:
                self.cluster.stop([group.l0, *group.l1s])
            # The sweep runs over the leaves of configuration 1; every other leaf can go.
            if key != "platform" or not options.sweep:
                self.cluster.stop(group.leaves)

    def measure_rest(self, server: ServerProcess, bodies: list[tuple[bytes, int]], spec: LoadSpec) -> None:
        """Measure configuration 4 at its own, lower rate."""
        self.cluster.wait_ready([server])
        rest_spec = replace(spec, rate=self.options.rest_rate, max_in_flight=4, timeout_s=30.0)
        self.measurements["features_in_body"] = measure(
            "features_in_body", RestTarget(server.address, bodies), rest_spec, [server], glances_per_request=self.options.glances_per_request
        )
        self.cluster.stop([server])

    def sweep(self) -> None:
        options = self.options
        bodies = {variant: encode_thrift_bodies(self.requests, timeout_ms=options.timeout_ms, variant=variant) for variant in options.sweep_variants}
        self.sweep_points = run_sweep(
            self.cluster, self.leaves["platform"], bodies, chunk_sizes=options.sweep_chunk_sizes, rates=options.sweep_rates,
            step_s=options.sweep_step_s, warmup_s=options.sweep_warmup_s, glances_per_request=options.glances_per_request,
            # Each point measures one chunk size, so the L1s must not choose their own.
            l1_arguments=("--fixed-chunk-size", *options.l1_arguments), p99_cap_ms=options.sweep_p99_cap_ms,
        )

    def stop(self) -> None:
        codes = self.cluster.stop()
        failed = {role: code for role, code in codes.items() if code not in (0, None)}
        if failed:
            logger.warning("servers exited with non-zero codes: %s (logs in %s)", failed, self.workdir)

    def report(self) -> BenchReport:
        options = self.options
        settings = {
            "glances_per_request": options.glances_per_request,
            "rate": options.rate,
            "rest_rate": options.rest_rate,
            "duration_s": options.duration_s,
            "timeout_ms": options.timeout_ms,
            "shards": self.num_shards,
            "leaves_per_shard": options.leaves_per_shard,
            "chunk_size": options.chunk_size,
            "sweep_p99_cap_ms": options.sweep_p99_cap_ms,
            "default_runner": self.leaf_kinds["platform"],
            "quick": options.quick,
            "wall_seconds": round(time.monotonic() - self.started, 1),
        }
        if options.l1_arguments:
            settings["l1_arguments"] = " ".join(options.l1_arguments)
        return BenchReport(provenance=self.origin, measurements=self.measurements, kernel=self.kernel, sweep=self.sweep_points, settings=settings)

    def write_sweep_files(self) -> None:
        options = self.options
        if not self.sweep_points:
            return
        if options.table is not None:
            options.table.parent.mkdir(parents=True, exist_ok=True)
            options.table.write_text(
                f"# Chunk-size sweep\n\nThroughput with client-side p99 capped at {options.sweep_p99_cap_ms:g} ms, 1 L0, "
                f"one L1 per shard, {options.leaves_per_shard} leaf per shard, {options.glances_per_request} glances per request.\n"
                f"{self.origin.line()}.\n\n" + sweep_table(self.sweep_points)
            )
        if options.plot is not None:
            plot_sweep(self.sweep_points, options.plot, title=self.origin.line())


def run_bench(options: BenchOptions) -> BenchReport:
    """Run every configuration, the kernel timing and the sweep; return the report (nothing printed)."""
    _check_artifacts(options)
    run = _Run(options)
    logger.info("benchmark in %s: %s", run.workdir, run.origin.line())
    try:
        run.start_leaves()
        rest_server: ServerProcess | None = None
        if "features_in_body" in options.configurations:
            rest_server = run.cluster.spawn(
                "features_in_body-rest", "loadtest.rest_peer", ["--listen", "127.0.0.1:0", "--model", str(options.model_base)]
            )

        # Every server loads TensorFlow, so all of them start at once, and the kernel timing and
        # the REST bodies are prepared while they do.
        with ThreadPoolExecutor(max_workers=1) as pool:
            rest_bodies = None
            if rest_server is not None:
                rest_requests = run.requests[:REST_POOL]
                rest_bodies = pool.submit(lambda: encode_rest_bodies([run.workload.feature_rows(u, g) for u, g in rest_requests]))
            if options.kernel:
                run.kernel = time_leaf_kernels(profiles_root=options.profiles, model_base=options.model_base)
            for group in run.leaves.values():
                run.cluster.wait_ready([s for replicas in group.values() for s in replicas])
            logger.info("leaves ready after %.0f s", time.monotonic() - run.started)

            spec = LoadSpec(rate=options.rate, duration_s=options.duration_s, warmup_s=options.warmup_s, seed=7)
            run.measure_platforms(spec)
            if rest_server is not None:
                run.measure_rest(rest_server, rest_bodies.result(), spec)

        if options.sweep:
            run.sweep()
    finally:
        run.stop()
    run.write_sweep_files()
    return run.report()

"""Command line of fmlite-platform: ``fmlite <command> --help`` documents each command.

Tier modules are imported inside each command, so ``fmlite serve-l0`` and ``serve-l1`` never
load TensorFlow and run from the controller-only install.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mind-small-sample"


def _listen(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` for a listening socket; port 0 picks a free port."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise SystemExit(f"invalid --listen {text!r}; expected HOST:PORT with a port in 0..65535")
    return host.strip("[]") or "127.0.0.1", int(port)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key, value


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on; port 0 picks a free port (default %(default)s)")
    parser.add_argument("--port-file", help="write the bound port to this file once listening")
    parser.add_argument("--drain-timeout-s", type=float, default=10.0, help="seconds to finish in-flight calls after SIGTERM (default %(default)s)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")


def _controller_options(parser: argparse.ArgumentParser) -> None:
    """Options of the controller tiers: draining and how replicas of the next tier are checked."""
    parser.add_argument("--drain-grace-s", type=float, default=0.0,
                        help="seconds between readiness turning false and the listening socket closing, while calls are "
                             "still served; set it above the callers' health-check interval (default %(default)s)")
    parser.add_argument("--health-interval-s", type=float, default=1.0,
                        help="seconds between health checks of each next-tier replica; 0 turns them off (default %(default)s)")
    parser.add_argument("--health-timeout-s", type=float, default=0.5, help="timeout of one health check (default %(default)s)")
    parser.add_argument("--eject-after-failures", type=int, default=5,
                        help="consecutive failed calls (refused, reset, Unavailable) that eject a replica (default %(default)s)")
    parser.add_argument("--eject-after-checks", type=int, default=2,
                        help="consecutive failed health checks that eject a replica (default %(default)s)")
    parser.add_argument("--readmit-after-checks", type=int, default=2,
                        help="consecutive passing health checks that re-admit an ejected replica (default %(default)s)")


def _replica_policy(args: argparse.Namespace) -> object:
    from controller.replicas import ReplicaPolicy

    return ReplicaPolicy(
        health_interval_s=args.health_interval_s,
        health_timeout_s=args.health_timeout_s,
        eject_after_failures=args.eject_after_failures,
        eject_after_checks=args.eject_after_checks,
        readmit_after_checks=args.readmit_after_checks,
    )


def _controller_server_config(args: argparse.Namespace) -> object:
    from rpc.server import ServerConfig
    from rpc.validation import max_body_bytes

    host, port = _listen(args.listen)
    return ServerConfig(
        host=host, port=port, max_body_bytes=max_body_bytes(), drain_timeout_s=args.drain_timeout_s, drain_grace_s=args.drain_grace_s
    )


def _bench_options(parser: argparse.ArgumentParser) -> None:
    """Options of ``fmlite bench``; ``loadtest.bench_cli`` turns them into ``BenchOptions``."""
    parser.add_argument("--var", default="var", help="artifact root holding profiles/ and models/fmlite/ (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="short windows and a two-step sweep: the run takes a few minutes")
    parser.add_argument("--json", action="store_true", help="also print all figures as one JSON object on the last line")
    parser.add_argument("--rate", type=float, help="offered requests per second of configurations 1 to 3 (default 20)")
    parser.add_argument("--rest-rate", type=float, help="offered requests per second of configuration 4 (default 0.5)")
    parser.add_argument("--duration-s", type=float, help="seconds of recorded load per configuration (default 20; 5 with --quick)")
    parser.add_argument("--warmup-s", type=float, help="seconds of load before recording starts (default 3; 1.5 with --quick)")
    parser.add_argument("--glances", type=int, help="glance ids per request (default 1000)")
    parser.add_argument("--leaves-per-shard", type=int, help="leaf replicas per shard (default 1)")
    parser.add_argument("--chunk-size", type=int, help="first FM-Lite chunk size the L1s of configurations 1 to 3 try before adapting (default 100)")
    parser.add_argument("--timeout-ms", type=int, help="timeout_ms of every request (default 50, the platform's budget)")
    parser.add_argument("--configurations", help="comma-separated subset of platform,platform_savedmodel,rpc_floor,features_in_body (default: all)")
    parser.add_argument("--no-kernel", action="store_true", help="skip timing the leaf's scoring step")
    parser.add_argument("--no-sweep", action="store_true", help="skip the chunk-size sweep")
    parser.add_argument("--sweep-chunk-sizes", help="comma-separated chunk sizes of the sweep (default 25,50,100,200,400,1000)")
    parser.add_argument("--sweep-variants", help="comma-separated variants of the sweep (default fmlite,cosine)")
    parser.add_argument("--sweep-rates", help="comma-separated offered rates of the sweep's steps, requests per second")
    parser.add_argument("--sweep-step-s", type=float, help="seconds of recorded load per sweep step (default 6; 2.5 with --quick)")
    parser.add_argument("--sweep-p99-cap-ms", type=float, help="client-side p99 a sweep step may have, in ms (default 50)")
    parser.add_argument("--l1-arg", action="append", default=[], metavar="OPTION",
                        help="extra serve-l1 option for every L1, repeatable (e.g. --l1-arg=--no-hedging)")
    parser.add_argument("--plot", help="write the sweep's plot to this PNG file")
    parser.add_argument("--table", help="write the sweep's Markdown table to this file")
    parser.add_argument("--record", help="append a Markdown record of the run to this file (e.g. docs/benchmarks.md)")
    parser.add_argument("--workdir", help="directory for server logs and port files (default: a new temporary directory)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmlite", description="FM-Lite training and two-tier serving platform")
    commands = parser.add_subparsers(dest="command", required=True)

    l0 = commands.add_parser("serve-l0", help="run the L0 router")
    _server_options(l0)
    l0.add_argument("--shard", action="append", required=True, metavar="K=HOST:PORT[,HOST:PORT]",
                    help="L1 addresses of shard K (repeat once per shard; dns+HOST:PORT resolves a name)")
    l0.add_argument("--traffic", help="traffic split JSON file (default: 100%% fmlite)")
    l0.add_argument("--deadline-ms", type=int, default=50, help="time budget of a request without timeout_ms (default %(default)s)")
    _controller_options(l0)

    l1 = commands.add_parser("serve-l1", help="run an L1 shard controller")
    _server_options(l1)
    l1.add_argument("--shard", type=int, required=True, help="shard index served")
    l1.add_argument("--num-shards", type=int, required=True, help="number of shards of the platform")
    l1.add_argument("--leaves", required=True, help="leaf addresses, comma-separated: framed://HOST:PORT (framed Thrift), HOST:PORT (Thrift over HTTP), "
                                                 "or either behind dns+ to resolve HOST to every address it has")
    l1.add_argument("--chunk-size", type=int, default=100,
                    help="glance ids per leaf call: the first size the L1 tries, or the only one with --fixed-chunk-size (default %(default)s)")
    l1.add_argument("--variant-chunk-size", action="append", type=_key_value, default=[], metavar="VARIANT=N",
                    help="chunk size for one variant (default cosine=400)")
    l1.add_argument("--chunk-timeout-ms", type=float, default=30.0, help="timeout of one leaf call (default %(default)s)")
    l1.add_argument("--fixed-chunk-size", action="store_true",
                    help="always send chunks of --chunk-size ids instead of choosing the size from measured leaf-call times")
    l1.add_argument("--min-chunk-size", type=int, default=50, help="smallest chunk size the L1 chooses, in glance ids (default %(default)s)")
    l1.add_argument("--max-chunk-size", type=int, default=10000, help="largest chunk size the L1 chooses, in glance ids (default %(default)s)")
    l1.add_argument("--chunk-budget-share", type=float, default=0.5,
                    help="share of the time left to the deadline (at most the chunk timeout) that one leaf call's "
                         "predicted time may take (default %(default)s)")
    l1.add_argument("--deadline-ms", type=int, default=50, help="time budget of a request without timeout_ms (default %(default)s)")
    l1.add_argument("--retries", type=int, default=1, help="extra calls of a failed chunk, each on another leaf (default %(default)s)")
    l1.add_argument("--no-hedging", action="store_true", help="never send a second copy of a slow chunk")
    l1.add_argument("--hedge-percentile", type=float, default=95.0,
                    help="percentile of recent leaf-call latency after which a chunk is hedged (default %(default)s)")
    l1.add_argument("--hedge-budget", type=float, default=0.05,
                    help="hedges allowed per leaf call, e.g. 0.05 for at most 5%% extra calls (default %(default)s)")
    l1.add_argument("--hedge-min-delay-ms", type=float, default=2.0, help="shortest hedge delay (default %(default)s)")
    l1.add_argument("--version-rounds", type=int, default=2,
                    help="rounds of re-sending chunks that came back at another model or profile version (default %(default)s)")
    _controller_options(l1)

    leaf = commands.add_parser("serve-leaf", help="run a leaf predictor")
    _server_options(leaf)
    leaf.add_argument("--shard", type=int, required=True, help="shard index whose users this leaf stores")
    leaf.add_argument("--num-shards", type=int, required=True, help="number of shards of the platform")
    leaf.add_argument("--profiles", help="profile snapshot root (contains CURRENT and <version>/); with --redis-url, "
                      "read only when Redis is unavailable at start")
    leaf.add_argument("--model", action="append", type=_key_value, default=[], metavar="VARIANT=DIR",
                      help="model base directory in TF Serving layout for a variant, e.g. fmlite=var/models/fmlite")
    leaf.add_argument("--runner", default="numpy", choices=["numpy", "savedmodel", "tfserving"],
                      help="model runner: numpy (fast path), savedmodel (in-process TensorFlow) or tfserving (gRPC) (default %(default)s)")
    leaf.add_argument("--tfserving-address", metavar="HOST:PORT", help="TensorFlow Serving gRPC address, for --runner tfserving")
    leaf.add_argument("--tfserving-model-name", help="model name in TensorFlow Serving (default: the variant name)")
    leaf.add_argument("--tfserving-timeout-ms", type=float, default=2000.0, help="deadline of one Predict call (default %(default)s)")
    leaf.add_argument("--grpc-max-message-bytes", type=int, default=4 * 1024 * 1024,
                      help="largest gRPC message sent or accepted; chunks are split below it (default %(default)s)")
    leaf.add_argument("--redis-url", help="Redis profile store, e.g. redis://127.0.0.1:6379/0 (default: file snapshots only)")
    leaf.add_argument("--redis-prefix", default="fmlite:profiles", help="key prefix in Redis (default %(default)s)")
    leaf.add_argument("--redis-connect-timeout-ms", type=float, default=250.0, help="Redis connect timeout (default %(default)s)")
    leaf.add_argument("--redis-timeout-ms", type=float, default=250.0, help="Redis timeout of small calls (default %(default)s)")
    leaf.add_argument("--redis-bulk-timeout-ms", type=float, default=10000.0,
                      help="Redis timeout of bulk reads while loading a version (default %(default)s)")
    leaf.add_argument("--max-cached-users", type=int, default=1_000_000,
                      help="users kept in memory from Redis, about 4.2 KB each with 145 meta columns and 384-wide embeddings (default %(default)s)")
    leaf.add_argument("--reload-interval-s", type=float, default=5.0,
                      help="seconds between checks for new model and profile versions; 0 turns hot reload off (default %(default)s)")
    leaf.add_argument("--no-cosine", action="store_true", help="do not serve the built-in cosine baseline variant")
    leaf.add_argument("--framed-port", type=int, default=0,
                      help="port of the framed Thrift listener on the --listen host, which L1s reach as framed://HOST:PORT; "
                           "0 picks a free port, -1 turns the listener off (default %(default)s)")
    leaf.add_argument("--framed-port-file", help="write the bound framed Thrift port to this file once listening")

    publish = commands.add_parser("publish-profiles", help="copy a profile snapshot into the Redis profile store and publish it")
    publish.add_argument("--redis-url", required=True, help="Redis URL, e.g. redis://127.0.0.1:6379/0")
    publish.add_argument("--prefix", default="fmlite:profiles", help="key prefix in Redis (default %(default)s)")
    publish.add_argument("--profiles", help="snapshot root (contains CURRENT and <version>/)")
    publish.add_argument("--version", type=int, help="snapshot version to publish (default: the one CURRENT names)")
    publish.add_argument("--no-activate", action="store_true", help="store the version without moving the version pointer")
    publish.add_argument("--keep-versions", type=int, default=2, help="complete versions kept in Redis after publishing (default %(default)s)")
    publish.add_argument("--activate", type=int, metavar="VERSION",
                         help="only point the store at VERSION, which must already be stored (rollback); writes nothing else")

    build = commands.add_parser("build-profiles", help="build the profile snapshot and training set without training a model")
    build.add_argument("--engine", choices=["local", "spark"], default="local", help="build engine (default %(default)s)")
    build.add_argument("--master", help="Spark master URL for --engine spark (default local[2])")
    build.add_argument("--data", default=str(DEFAULT_DATA), help="MIND directory with behaviors.tsv and news.tsv (default %(default)s)")
    build.add_argument("--out", default="var", help="artifact root; writes profiles/ and training/ (default %(default)s)")
    build.add_argument("--num-shards", type=int, default=2, help="user shards of the snapshot (default %(default)s)")
    build.add_argument("--version", type=int, help="version number (default: the UTC time as YYYYMMDDHHMMSS)")
    build.add_argument("--glance-scope", choices=["all", "logged"], default="all", help="glances encoded and published (default %(default)s)")
    build.add_argument("--seed", type=int, default=7, help="random seed of the negative sub-sampling (default %(default)s)")
    build.add_argument("--no-publish", action="store_true", help="write the snapshot without moving profiles/CURRENT")
    build.add_argument("--redis-url", help="also copy the snapshot into this Redis profile store and publish it there")

    train = commands.add_parser("train", help="build profiles and train FM-Lite on MIND data")
    train.add_argument("--data", default=str(DEFAULT_DATA), help="MIND directory with behaviors.tsv and news.tsv (default %(default)s)")
    train.add_argument("--out", default="var", help="artifact root (default %(default)s)")
    train.add_argument("--num-shards", type=int, default=2, help="user shards of the snapshot (default %(default)s)")
    train.add_argument("--epochs", type=int, default=None, help="training epochs (default: the pipeline's)")
    train.add_argument("--seed", type=int, default=7, help="random seed (default %(default)s)")

    up = commands.add_parser("up", help="train when needed and run the local platform on loopback")
    up.add_argument("--data", default=str(DEFAULT_DATA), help="MIND directory (default %(default)s)")
    up.add_argument("--var", default="var", help="artifact root (default %(default)s)")
    up.add_argument("--shards", type=int, default=2, help="shards (default %(default)s)")
    up.add_argument("--leaves-per-shard", type=int, default=2, help="leaf replicas per shard (default %(default)s)")
    up.add_argument("--port", type=int, default=9090, help="L0 port; 0 picks a free one (default %(default)s)")
    up.add_argument("--traffic", help="traffic split JSON file for L0")
    up.add_argument("--once", action="store_true", help="replay the held-out day through L0, print a report and exit")
    up.add_argument("--timeout-ms", type=int, default=1000, help="request budget used by --once (default %(default)s)")
    up.add_argument("--redis", action="store_true",
                    help="start redis-server on a free loopback port, publish the profiles to it and serve them from Redis")

    predict = commands.add_parser("predict", help="score glances for a user through any tier")
    predict.add_argument("--address", required=True, help="HOST:PORT of an L0, L1 or leaf over HTTP, or framed://HOST:PORT of a leaf's framed listener")
    predict.add_argument("--user", required=True, help="user id")
    predict.add_argument("--glances", required=True, help="comma-separated glance ids")
    predict.add_argument("--variant", help="model variant (default: the traffic split's)")
    predict.add_argument("--timeout-ms", type=int, default=1000, help="request budget (default %(default)s)")
    predict.add_argument("--json", action="store_true", help="print the whole response as JSON")

    bench = commands.add_parser(
        "bench", help="benchmark the platform against its peers on loopback: predictions per CPU-second and latency"
    )
    _bench_options(bench)
    _release_commands(commands)
    # evaluate, simulate and finetune-text; their module imports only the standard library until run.
    from model.cli_quality import add_quality_parsers

    add_quality_parsers(commands)
    return parser


def _run_l0(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from controller.replicas import parse_replica_list
    from controller.router import Router, RouterConfig
    from controller.traffic import TrafficConfigError, load_traffic
    from fmlite.serve import configure_logging, install_event_loop, run_server

    configure_logging("l0", args.log_level)
    try:
        traffic = load_traffic(args.traffic)
    except TrafficConfigError as error:
        raise SystemExit(f"invalid traffic config: {error}") from None
    shards: dict[int, tuple[str, ...]] = {}
    for entry in args.shard:
        key, _, addresses = entry.partition("=")
        if not key.isdigit() or not addresses:
            raise SystemExit(f"invalid --shard {entry!r}; expected K=HOST:PORT[,HOST:PORT]")
        shards[int(key)] = tuple(parse_replica_list(addresses))
    config = RouterConfig(
        shards=shards, traffic=traffic, default_timeout_ms=args.deadline_ms, replica_policy=_replica_policy(args)
    )
    registry = CollectorRegistry()
    handler = Router(config, registry=registry)
    server_config = _controller_server_config(args)
    install_event_loop()
    asyncio.run(run_server(handler, server_config, registry=registry, port_file=args.port_file))
    return 0


def _run_l1(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from controller.chunking import AdaptiveChunkConfig
    from controller.hedging import HedgeConfig
    from controller.replicas import parse_replica_list
    from controller.shard import ShardController, ShardControllerConfig
    from fmlite.serve import configure_logging, install_event_loop, run_server

    configure_logging(f"l1-{args.shard}", args.log_level)
    variant_sizes = {"cosine": 400}
    variant_sizes.update({name: int(size) for name, size in args.variant_chunk_size})
    config = ShardControllerConfig(
        shard=args.shard,
        num_shards=args.num_shards,
        leaves=tuple(parse_replica_list(args.leaves)),
        chunk_size=args.chunk_size,
        variant_chunk_sizes=variant_sizes,
        chunk_timeout_ms=args.chunk_timeout_ms,
        default_timeout_ms=args.deadline_ms,
        retries=args.retries,
        version_rounds=args.version_rounds,
        hedging=HedgeConfig(
            enabled=not args.no_hedging,
            percentile=args.hedge_percentile,
            budget=args.hedge_budget,
            min_delay_ms=args.hedge_min_delay_ms,
        ),
        replica_policy=_replica_policy(args),
        adaptive_chunks=AdaptiveChunkConfig(
            enabled=not args.fixed_chunk_size,
            min_size=args.min_chunk_size,
            max_size=args.max_chunk_size,
            budget_share=args.chunk_budget_share,
        ),
    )
    registry = CollectorRegistry()
    handler = ShardController(config, registry=registry)
    server_config = _controller_server_config(args)
    install_event_loop()
    asyncio.run(run_server(handler, server_config, registry=registry, port_file=args.port_file))
    return 0


def _leaf_config(args: argparse.Namespace) -> object:
    from leaf.runners import RunnerOptions
    from leaf.service import LeafConfig
    from leaf.store import RedisStoreConfig

    if args.profiles is None and args.redis_url is None:
        raise SystemExit("serve-leaf needs --profiles DIR, --redis-url URL or both")
    if args.runner == "tfserving" and not args.tfserving_address:
        raise SystemExit("--runner tfserving needs --tfserving-address HOST:PORT")
    redis = None
    if args.redis_url:
        try:
            redis = RedisStoreConfig(
                url=args.redis_url,
                prefix=args.redis_prefix,
                connect_timeout_s=args.redis_connect_timeout_ms / 1000.0,
                socket_timeout_s=args.redis_timeout_ms / 1000.0,
                bulk_timeout_s=args.redis_bulk_timeout_ms / 1000.0,
                max_cached_users=args.max_cached_users,
            )
        except ValueError as error:
            raise SystemExit(f"invalid Redis settings: {error}") from error
    options = RunnerOptions(
        tfserving_address=args.tfserving_address,
        tfserving_model_name=args.tfserving_model_name,
        tfserving_timeout_s=args.tfserving_timeout_ms / 1000.0,
        grpc_max_message_bytes=args.grpc_max_message_bytes,
    )
    try:
        return LeafConfig(
            shard=args.shard,
            num_shards=args.num_shards,
            profiles=args.profiles,
            models=dict(args.model),
            runner=args.runner,
            runner_options=options,
            serve_cosine=not args.no_cosine,
            redis=redis,
            reload_interval_s=args.reload_interval_s,
        )
    except ValueError as error:
        raise SystemExit(f"invalid leaf settings: {error}") from error


def _run_leaf(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from fmlite.serve import configure_logging, install_event_loop, run_server
    from leaf.service import LeafHandler
    from rpc.server import ServerConfig
    from rpc.validation import max_body_bytes

    configure_logging(f"leaf-{args.shard}", args.log_level)
    config = _leaf_config(args)
    registry = CollectorRegistry()
    handler = LeafHandler(config, registry=registry)
    host, port = _listen(args.listen)
    if not -1 <= args.framed_port <= 65535:
        raise SystemExit(f"invalid --framed-port {args.framed_port}; expected a port in 0..65535, or -1 for no framed listener")
    framed_port = args.framed_port if args.framed_port >= 0 else None
    install_event_loop()
    asyncio.run(run_server(handler, ServerConfig(host=host, port=port, max_body_bytes=max_body_bytes(), drain_timeout_s=args.drain_timeout_s),
                           registry=registry, port_file=args.port_file, load=handler.load,
                           framed_port=framed_port, framed_port_file=args.framed_port_file))
    return 0


def _run_publish(args: argparse.Namespace) -> int:
    from fmlite import snapshot
    from fmlite.serve import configure_logging
    from model.publish import PublishError, activate_version, connect, publish_snapshot

    configure_logging("publish")
    client = connect(args.redis_url)
    try:
        if args.activate is not None:
            previous = activate_version(client, args.activate, prefix=args.prefix)
            print(f"profile store {args.prefix} now serves version {args.activate} (was {previous})")
            return 0
        if not args.profiles:
            raise SystemExit("publish-profiles needs --profiles DIR (or --activate VERSION)")
        version = args.version if args.version is not None else snapshot.current_version(args.profiles)
        if version is None:
            raise SystemExit(f"no published snapshot under {args.profiles}; pass --version N")
        result = publish_snapshot(
            Path(args.profiles) / str(version), client=client, prefix=args.prefix, activate=not args.no_activate, keep_versions=args.keep_versions,
        )
    except (PublishError, snapshot.SnapshotError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        client.close()
    state = "published" if result.activated else "stored (not activated)"
    print(f"profile version {result.version} {state}: {result.glances} glances, {result.users} users, "
          f"{result.rejected_rows} rows rejected, {result.seconds:.1f} s; previous version {result.previous_version}; "
          f"deleted versions {list(result.deleted_versions)}")
    return 0


def _run_build(args: argparse.Namespace) -> int:
    import logging

    from model.config import PipelineConfig
    from model.profile_build import build_profiles

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = PipelineConfig(
        data_dir=Path(args.data), out=Path(args.out), num_shards=args.num_shards, seed=args.seed, version=args.version,
        glance_scope=args.glance_scope, progress=False,
    )
    result = build_profiles(config, engine=args.engine, spark_master=args.master, publish=not args.no_publish)
    print(f"built profile version {result.version} with the {result.engine} engine in {result.seconds:.1f} s: "
          f"{result.users} users, {result.glances} glances; snapshot {result.snapshot_dir}, training set {result.training_dir}")
    if args.redis_url:
        from model.publish import connect, publish_snapshot

        client = connect(args.redis_url)
        try:
            published = publish_snapshot(result.snapshot_dir, client=client, activate=not args.no_publish)
        finally:
            client.close()
        print(f"copied version {published.version} into Redis in {published.seconds:.1f} s (activated: {published.activated})")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from fmlite.launcher import train_artifacts

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"error: --out {args.out} is a file; it must be a directory (the artifact root) or not exist yet", file=sys.stderr)
        return 2
    try:
        train_artifacts(data=args.data, out=args.out, num_shards=args.num_shards, epochs=args.epochs, seed=args.seed)
    except (ValueError, OSError) as error:
        # Unreadable or malformed data (every format error of model/ is a ValueError), bad
        # settings such as --epochs 0, and file-system errors under --out.
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    return 0


def _run_up(args: argparse.Namespace) -> int:
    from fmlite.launcher import run_up

    return run_up(args)


def _run_predict(args: argparse.Namespace) -> int:
    from rpc.framed import client_for
    from rpc.idl import fmlite_thrift as T

    glances = [g for g in args.glances.split(",") if g]
    if not glances:
        print(f"error: --glances {args.glances!r} names no glance id; pass comma-separated ids", file=sys.stderr)
        return 2
    request = T.PredictRequest(user_id=args.user, glance_ids=glances, variant=args.variant, timeout_ms=args.timeout_ms)

    async def call() -> object:
        client = client_for(args.address)
        try:
            return await client.predict(request, timeout_s=args.timeout_ms / 1000.0 + 1.0)
        finally:
            await client.close()

    try:
        response = asyncio.run(call())
    except (T.InvalidRequest, T.Unavailable, T.DeadlineExceeded) as error:
        print(f"error: {type(error).__name__}: {error.message}", file=sys.stderr)
        return 2
    except Exception as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    flags = list(response.flags)
    if args.json:
        print(json.dumps({
            "request_id": response.request_id, "variant": response.variant, "shard": response.shard,
            "model_version": response.model_version, "profile_version": response.profile_version,
            "cold_start_user": response.cold_start_user, "unknown_glances": response.unknown_glances,
            "scores": response.scores, "flags": flags,
            # Set by L0 only: the user's bucket, and what its exploration policy or blend did.
            "bucket": response.bucket, "explored_positions": response.explored_positions,
            "scores_before_exploration": response.scores_before_exploration,
            "variant_scores": response.variant_scores, "request_time_ms": response.request_time_ms,
            "glance_stats_version": response.glance_stats_version,
        }))
        return 0
    print(f"# variant {response.variant}, shard {response.shard}, model {response.model_version}, "
          f"profiles {response.profile_version}, cold start {response.cold_start_user}")
    if response.bucket:
        print(f"# bucket {response.bucket}, explored positions {response.explored_positions or 0}")
    for glance, score, flag in zip(glances, response.scores, flags):
        notes = []
        if flag & T.FLAG_UNKNOWN_GLANCE:
            notes.append("unknown glance")
        if flag & T.FLAG_COLD_START_USER:
            notes.append("cold-start user")
        if flag & T.FLAG_EXPLORED:
            notes.append("explored")
        print(f"{glance}\t{score:.6f}" + (f"\t({', '.join(notes)})" if notes else ""))
    return 0


def _platform_options(parser: argparse.ArgumentParser) -> None:
    """Options of ``release`` and ``rollback``: where the artifacts are and which platform serves them."""
    parser.add_argument("--root", default="var", help="artifact root the leaves serve from: models/, profiles/ (default %(default)s)")
    parser.add_argument("--l0", help="L0 address whose health call lists the L1s and leaves (default: 127.0.0.1 and the port in ROOT/run/l0.port)")
    parser.add_argument("--leaves", help="comma-separated leaf addresses to wait for, instead of asking L0")
    parser.add_argument("--redis-url", help="Redis profile store the leaves read (make up REDIS=1, Helm redis.mode): its version pointer moves too")
    parser.add_argument("--redis-prefix", default="fmlite:profiles", help="key prefix in Redis (default %(default)s)")
    parser.add_argument("--no-wait", action="store_true", help="publish without waiting for the leaves")
    parser.add_argument("--wait-timeout-s", type=float, default=300.0, help="seconds to wait for every leaf to report the versions (default %(default)s)")


def _release_commands(commands: argparse._SubParsersAction) -> None:
    release = commands.add_parser("release", help="train, compare with the served version on the held-out day, publish and wait for the leaves")
    release.add_argument("--data", default=str(DEFAULT_DATA), help="MIND or Parquet data to train on and to take the held-out day from (default %(default)s)")
    release.add_argument("--candidate", help="release the output root of an earlier `fmlite train --out DIR` instead of training now")
    release.add_argument("--metric", default="map@50", choices=["map@10", "map@25", "map@50", "auc"], help="gate metric (default %(default)s)")
    release.add_argument("--tolerance", type=float, default=0.01,
                         help="largest drop of the gate metric, candidate minus served in metric units, that still publishes (default %(default)s)")
    release.add_argument("--num-shards", type=int, help="user shards of the new snapshot (default: the served snapshot's, else 2)")
    release.add_argument("--epochs", type=int, help="training epochs (default: the pipeline's)")
    release.add_argument("--seed", type=int, default=7, help="random seed of the training run (default %(default)s)")
    release.add_argument("--glance-scope", default="all", choices=["all", "logged"], help="glances encoded and published (default %(default)s)")
    release.add_argument("--text-cache", help="text-embedding cache directory (default ROOT/cache)")
    _platform_options(release)
    rollback = commands.add_parser("rollback", help="serve the previous published version again and wait for the leaves")
    _platform_options(rollback)


def _platform_target(args: argparse.Namespace) -> object:
    from fmlite.release import PlatformTarget

    l0 = args.l0
    port_file = Path(args.root) / "run" / "l0.port"
    if l0 is None and not args.leaves and not args.no_wait and port_file.is_file():
        l0 = f"127.0.0.1:{port_file.read_text().strip()}"
    return PlatformTarget(
        l0=l0,
        leaves=tuple(item.strip() for item in (args.leaves or "").split(",") if item.strip()),
        redis_url=args.redis_url,
        redis_prefix=args.redis_prefix,
        wait=not args.no_wait,
        wait_timeout_s=args.wait_timeout_s,
    )


def _run_release_command(args: argparse.Namespace) -> int:
    from fmlite.glance_stats import GlanceStatsError
    from fmlite.release import EXIT_FAILED, ReleaseConfig, ReleaseError, release, rollback
    from fmlite.release_eval import ReleaseGateError
    from fmlite.release_store import ReleaseStoreError
    from fmlite.serve import configure_logging
    from fmlite.snapshot import SnapshotError

    configure_logging(args.command, "INFO")
    try:
        target = _platform_target(args)
        if args.command == "rollback":
            return rollback(Path(args.root), target, out=lambda line: print(line, flush=True))
        config = ReleaseConfig(
            root=Path(args.root),
            data=Path(args.data),
            target=target,
            candidate=Path(args.candidate) if args.candidate else None,
            metric=args.metric,
            tolerance=args.tolerance,
            num_shards=args.num_shards,
            epochs=args.epochs,
            seed=args.seed,
            glance_scope=args.glance_scope,
            text_cache_dir=Path(args.text_cache) if args.text_cache else None,
        )
        return release(config, out=lambda line: print(line, flush=True))
    except (ReleaseError, ReleaseGateError, ReleaseStoreError, SnapshotError, GlanceStatsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED


def _run_bench(args: argparse.Namespace) -> int:
    from loadtest.bench_cli import run_bench_command

    return run_bench_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "serve-l0": _run_l0,
        "serve-l1": _run_l1,
        "serve-leaf": _run_leaf,
        "publish-profiles": _run_publish,
        "build-profiles": _run_build,
        "train": _run_train,
        "up": _run_up,
        "predict": _run_predict,
        "bench": _run_bench,
        "release": _run_release_command,
        "rollback": _run_release_command,
    }
    if args.command not in handlers:
        return args.handler(args)
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

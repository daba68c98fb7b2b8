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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmlite", description="FM-Lite training and two-tier serving platform")
    commands = parser.add_subparsers(dest="command", required=True)

    l0 = commands.add_parser("serve-l0", help="run the L0 router")
    _server_options(l0)
    l0.add_argument("--shard", action="append", required=True, metavar="K=HOST:PORT[,HOST:PORT]",
                    help="L1 addresses of shard K (repeat once per shard; dns+HOST:PORT resolves a name)")
    l0.add_argument("--traffic", help="traffic split JSON file (default: 100%% fmlite)")
    l0.add_argument("--deadline-ms", type=int, default=50, help="time budget of a request without timeout_ms (default %(default)s)")

    l1 = commands.add_parser("serve-l1", help="run an L1 shard controller")
    _server_options(l1)
    l1.add_argument("--shard", type=int, required=True, help="shard index served")
    l1.add_argument("--num-shards", type=int, required=True, help="number of shards of the platform")
    l1.add_argument("--leaves", required=True, help="leaf addresses: HOST:PORT[,HOST:PORT] or dns+HOST:PORT")
    l1.add_argument("--chunk-size", type=int, default=100, help="glance ids per leaf call (default %(default)s)")
    l1.add_argument("--variant-chunk-size", action="append", type=_key_value, default=[], metavar="VARIANT=N",
                    help="chunk size for one variant (default cosine=400)")
    l1.add_argument("--chunk-timeout-ms", type=float, default=30.0, help="timeout of one leaf call (default %(default)s)")
    l1.add_argument("--deadline-ms", type=int, default=50, help="time budget of a request without timeout_ms (default %(default)s)")

    leaf = commands.add_parser("serve-leaf", help="run a leaf predictor")
    _server_options(leaf)
    leaf.add_argument("--shard", type=int, required=True, help="shard index whose users this leaf stores")
    leaf.add_argument("--num-shards", type=int, required=True, help="number of shards of the platform")
    leaf.add_argument("--profiles", required=True, help="profile snapshot root (holds CURRENT and <version>/)")
    leaf.add_argument("--model", action="append", type=_key_value, default=[], metavar="VARIANT=DIR",
                      help="model base directory in TF Serving layout for a variant, e.g. fmlite=var/models/fmlite")
    leaf.add_argument("--runner", default="savedmodel", choices=["savedmodel"], help="model runner (default %(default)s)")
    leaf.add_argument("--no-cosine", action="store_true", help="do not serve the built-in cosine baseline variant")

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

    predict = commands.add_parser("predict", help="score glances for a user through any tier")
    predict.add_argument("--address", required=True, help="HOST:PORT of an L0, L1 or leaf")
    predict.add_argument("--user", required=True, help="user id")
    predict.add_argument("--glances", required=True, help="comma-separated glance ids")
    predict.add_argument("--variant", help="model variant (default: the traffic split's)")
    predict.add_argument("--timeout-ms", type=int, default=1000, help="request budget (default %(default)s)")
    predict.add_argument("--json", action="store_true", help="print the whole response as JSON")
    return parser


def _run_l0(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from controller.replicas import parse_replica_list
    from controller.router import Router, RouterConfig
    from controller.traffic import load_traffic
    from fmlite.serve import configure_logging, install_event_loop, run_server
    from rpc.server import ServerConfig
    from rpc.validation import max_body_bytes

    configure_logging("l0", args.log_level)
    shards: dict[int, tuple[str, ...]] = {}
    for entry in args.shard:
        key, _, addresses = entry.partition("=")
        if not key.isdigit() or not addresses:
            raise SystemExit(f"invalid --shard {entry!r}; expected K=HOST:PORT[,HOST:PORT]")
        shards[int(key)] = tuple(parse_replica_list(addresses))
    config = RouterConfig(shards=shards, traffic=load_traffic(args.traffic), default_timeout_ms=args.deadline_ms)
    registry = CollectorRegistry()
    handler = Router(config, registry=registry)
    host, port = _listen(args.listen)
    install_event_loop()
    asyncio.run(run_server(handler, ServerConfig(host=host, port=port, max_body_bytes=max_body_bytes(), drain_timeout_s=args.drain_timeout_s),
                           registry=registry, port_file=args.port_file))
    return 0


def _run_l1(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from controller.replicas import parse_replica_list
    from controller.shard import ShardController, ShardControllerConfig
    from fmlite.serve import configure_logging, install_event_loop, run_server
    from rpc.server import ServerConfig
    from rpc.validation import max_body_bytes

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
    )
    registry = CollectorRegistry()
    handler = ShardController(config, registry=registry)
    host, port = _listen(args.listen)
    install_event_loop()
    asyncio.run(run_server(handler, ServerConfig(host=host, port=port, max_body_bytes=max_body_bytes(), drain_timeout_s=args.drain_timeout_s),
                           registry=registry, port_file=args.port_file))
    return 0


def _run_leaf(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from fmlite.serve import configure_logging, install_event_loop, run_server
    from leaf.service import LeafConfig, LeafHandler
    from rpc.server import ServerConfig
    from rpc.validation import max_body_bytes

    configure_logging(f"leaf-{args.shard}", args.log_level)
    config = LeafConfig(
        shard=args.shard,
        num_shards=args.num_shards,
        profiles=args.profiles,
        models=dict(args.model),
        runner=args.runner,
        serve_cosine=not args.no_cosine,
    )
    registry = CollectorRegistry()
    handler = LeafHandler(config, registry=registry)
    host, port = _listen(args.listen)
    install_event_loop()
    asyncio.run(run_server(handler, ServerConfig(host=host, port=port, max_body_bytes=max_body_bytes(), drain_timeout_s=args.drain_timeout_s),
                           registry=registry, port_file=args.port_file, load=handler.load))
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from fmlite.launcher import train_artifacts

    train_artifacts(data=args.data, out=args.out, num_shards=args.num_shards, epochs=args.epochs, seed=args.seed)
    return 0


def _run_up(args: argparse.Namespace) -> int:
    from fmlite.launcher import run_up

    return run_up(args)


def _run_predict(args: argparse.Namespace) -> int:
    from rpc.client import ThriftHttpClient
    from rpc.idl import fmlite_thrift as T

    glances = [g for g in args.glances.split(",") if g]
    request = T.PredictRequest(user_id=args.user, glance_ids=glances, variant=args.variant, timeout_ms=args.timeout_ms)

    async def call() -> object:
        client = ThriftHttpClient(args.address)
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
        }))
        return 0
    print(f"# variant {response.variant}, shard {response.shard}, model {response.model_version}, "
          f"profiles {response.profile_version}, cold start {response.cold_start_user}")
    for glance, score, flag in zip(glances, response.scores, flags):
        notes = []
        if flag & T.FLAG_UNKNOWN_GLANCE:
            notes.append("unknown glance")
        if flag & T.FLAG_COLD_START_USER:
            notes.append("cold-start user")
        print(f"{glance}\t{score:.6f}" + (f"\t({', '.join(notes)})" if notes else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "serve-l0": _run_l0,
        "serve-l1": _run_l1,
        "serve-leaf": _run_leaf,
        "train": _run_train,
        "up": _run_up,
        "predict": _run_predict,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

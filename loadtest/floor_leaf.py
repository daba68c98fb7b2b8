"""The RPC floor: a real leaf process whose runners return a constant score.

Everything a leaf does per call except the model runs as in ``fmlite serve-leaf``: the Thrift
server, request validation, the shard check, the user and glance profile lookups, flags and the
response. Only the scoring step is replaced by a constant, so the platform over these leaves
costs what the wire and the bookkeeping cost. No model is loaded (the process never imports
TensorFlow): each ``--model`` directory only gives the version that responses name. Hot reload
is off, so the constant runners stay installed for the life of the process.

Run: ``python -m loadtest.floor_leaf --shard 0 --num-shards 2 --profiles var/profiles --model fmlite=var/models/fmlite``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Sequence

import numpy as np

__all__ = ["CONSTANT_SCORE", "ConstantRunner", "main"]

logger = logging.getLogger(__name__)

# Score every known glance gets from the floor leaf.
CONSTANT_SCORE = 0.5


class ConstantRunner:
    """A runner that scores every row ``CONSTANT_SCORE``; it keeps the name and version it replaces."""

    kind = "constant"

    def __init__(self, name: str, version: str):
        self.name = name
        self.version = version

    def bind(self, profiles: object) -> "ConstantRunner":
        return self

    def score(self, user: object, profiles: object, rows: np.ndarray) -> np.ndarray:
        return np.full(len(rows), CONSTANT_SCORE, dtype=np.float32)

    def close(self) -> None:
        pass


def _model(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected VARIANT=DIR, got {text!r}")
    return name, path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.floor_leaf", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on; port 0 picks a free port (default %(default)s)")
    parser.add_argument("--port-file", help="write the bound port to this file once listening")
    parser.add_argument("--framed-port", type=int, default=0,
                        help="port of the framed Thrift listener, as in serve-leaf; 0 picks a free port, -1 turns it off (default %(default)s)")
    parser.add_argument("--framed-port-file", help="write the bound framed Thrift port to this file once listening")
    parser.add_argument("--shard", type=int, required=True, help="shard index whose users this leaf stores")
    parser.add_argument("--num-shards", type=int, required=True, help="number of shards of the platform")
    parser.add_argument("--profiles", required=True, help="profile snapshot root, the directory with CURRENT and <version>/")
    parser.add_argument("--model", action="append", type=_model, default=[], metavar="VARIANT=DIR",
                        help="model base directory of a variant; only its newest version number is read, for responses")
    parser.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from prometheus_client import CollectorRegistry

    from fmlite.serve import configure_logging, install_event_loop, run_server
    from leaf.model_files import latest_model_version
    from leaf.reload import LeafState
    from leaf.service import LeafConfig, LeafHandler
    from rpc.server import ServerConfig
    from rpc.validation import max_body_bytes

    configure_logging(f"floor-leaf-{args.shard}", args.log_level)
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        raise SystemExit(f"invalid --listen {args.listen!r}; expected HOST:PORT")
    versions = {name: str(latest_model_version(path)) for name, path in args.model}
    # Only the built-in cosine runner is loaded; every variant is then replaced by a constant.
    config = LeafConfig(shard=args.shard, num_shards=args.num_shards, profiles=args.profiles, models={}, reload_interval_s=0.0)
    registry = CollectorRegistry()
    handler = LeafHandler(config, registry=registry)

    def load() -> None:
        handler.load()
        state = handler.state
        runners = {name: ConstantRunner(name, runner.version) for name, runner in state.runners.items()}
        runners.update({name: ConstantRunner(name, version) for name, version in versions.items()})
        handler.install(LeafState(profiles=state.profiles, runners=runners, models=runners))
        logger.info("serving constant score %s for variants %s", CONSTANT_SCORE, sorted(runners))

    install_event_loop()
    server_config = ServerConfig(host=host.strip("[]") or "127.0.0.1", port=int(port), max_body_bytes=max_body_bytes())
    framed_port = args.framed_port if args.framed_port >= 0 else None
    asyncio.run(run_server(handler, server_config, registry=registry, port_file=args.port_file, load=load,
                           framed_port=framed_port, framed_port_file=args.framed_port_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())

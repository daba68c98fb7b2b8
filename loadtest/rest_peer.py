"""The usual alternative to leaf profile caches: one process serving TensorFlow Serving's REST predict API.

The caller looks up the user's and every glance's feature vectors itself and sends them as JSON,
one instance per (user, glance) row, to ``POST /v1/models/<name>:predict``. The server decodes
the JSON, builds the six signature inputs and calls the SavedModel once per request, in process,
the way TensorFlow Serving runs it. This is the benchmark's peer configuration, not part of the
platform: it holds no profiles and shards nothing.

Accepted bodies follow TensorFlow Serving's REST API: ``{"instances": [{input: row, ...}, ...]}``
(row format) or ``{"inputs": {input: [rows], ...}}`` (columnar format). The reply is
``{"predictions": [score, ...]}``, one score per instance; a malformed body or a missing input
gets HTTP 400 with ``{"error": message}``.

Run: ``python -m loadtest.rest_peer --model var/models/fmlite --listen 127.0.0.1:8501``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from aiohttp import web

from fmlite.signature import INPUT_NAMES

__all__ = ["RestPredictError", "parse_predict_body", "RestPeer", "main"]

logger = logging.getLogger(__name__)


class RestPredictError(ValueError):
    """A predict body is not valid JSON in TensorFlow Serving's row or columnar format."""


def _as_matrix(name: str, value: Any, width: int) -> np.ndarray:
    try:
        matrix = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise RestPredictError(f"input {name!r} is not a list of numbers: {error}") from None
    if matrix.ndim != 2 or matrix.shape[1] != width:
        raise RestPredictError(f"input {name!r} has shape {list(matrix.shape)}; the signature expects [N, {width}]")
    return matrix


def parse_predict_body(body: bytes, widths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Decode a REST predict body into the six signature inputs, ``[N, width]`` float32 each."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RestPredictError(f"body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise RestPredictError(f"body must be a JSON object with 'instances' or 'inputs', got {type(document).__name__}")
    if "instances" in document:
        instances = document["instances"]
        if not isinstance(instances, list) or not instances:
            raise RestPredictError("'instances' must be a non-empty list of objects")
        if not all(isinstance(instance, dict) for instance in instances):
            raise RestPredictError("every entry of 'instances' must be an object keyed by input name")
        columns: dict[str, Any] = {}
        for name in INPUT_NAMES:
            try:
                columns[name] = [instance[name] for instance in instances]
            except KeyError:
                raise RestPredictError(f"an instance lacks input {name!r}; every instance needs {list(INPUT_NAMES)}") from None
    elif "inputs" in document:
        columns = document["inputs"]
        if not isinstance(columns, dict):
            raise RestPredictError("'inputs' must be an object keyed by input name")
        missing = [name for name in INPUT_NAMES if name not in columns]
        if missing:
            raise RestPredictError(f"'inputs' lacks {missing}")
    else:
        raise RestPredictError("body has neither 'instances' nor 'inputs'")
    arrays = {name: _as_matrix(name, columns[name], widths[name]) for name in INPUT_NAMES}
    counts = {len(matrix) for matrix in arrays.values()}
    if len(counts) != 1:
        raise RestPredictError(f"inputs have different row counts {sorted(counts)}")
    return arrays


class RestPeer:
    """aiohttp application around one SavedModel version."""

    def __init__(self, model_base: Path, *, model_name: str):
        from leaf.savedmodel_runner import SavedModelRunner

        self.model_name = model_name
        self.runner = SavedModelRunner(model_name, model_base)
        self.widths = dict(self.runner.input_widths)

    def build_app(self, *, max_body_bytes: int) -> web.Application:
        app = web.Application(client_max_size=max_body_bytes)
        app.router.add_post(f"/v1/models/{self.model_name}:predict", self._predict)
        app.router.add_get(f"/v1/models/{self.model_name}", self._status)
        app.router.add_get("/readyz", self._ready)
        app.router.add_get("/healthz", self._ready)
        return app

    async def _ready(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _status(self, request: web.Request) -> web.Response:
        status = {"version": self.runner.version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        return web.json_response({"model_version_status": [status]})

    async def _predict(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            arrays = parse_predict_body(body, self.widths)
        except RestPredictError as error:
            return web.json_response({"error": str(error)}, status=400)
        scores = self.runner.predict_arrays(arrays)
        return web.Response(body=json.dumps({"predictions": scores.tolist()}).encode(), content_type="application/json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.rest_peer", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model base directory in TensorFlow Serving's layout (<base>/<version>/)")
    parser.add_argument("--model-name", default="fmlite", help="name in the URL /v1/models/<name>:predict (default %(default)s)")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on; port 0 picks a free port (default %(default)s)")
    parser.add_argument("--port-file", help="write the bound port to this file once listening")
    parser.add_argument("--max-body-mib", type=int, default=64, help="largest accepted request body in MiB (default %(default)s)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    return parser


async def _serve(peer: RestPeer, host: str, port: int, *, port_file: str | None, max_body_bytes: int) -> None:
    runner = web.AppRunner(peer.build_app(max_body_bytes=max_body_bytes), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    if port_file:
        temporary = Path(f"{port_file}.tmp")
        temporary.write_text(f"{bound}\n")
        os.replace(temporary, port_file)
    logger.info("REST predict server for model %s version %s listening on %s:%d", peer.model_name, peer.runner.version, host, bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    logger.info("stop signal received; closing")
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s rest-peer[%(process)d] %(levelname)s %(name)s: %(message)s")
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        raise SystemExit(f"invalid --listen {args.listen!r}; expected HOST:PORT")
    peer = RestPeer(Path(args.model), model_name=args.model_name)
    from fmlite.serve import install_event_loop

    install_event_loop()
    asyncio.run(_serve(peer, host.strip("[]") or "127.0.0.1", int(port), port_file=args.port_file, max_body_bytes=args.max_body_mib << 20))
    return 0


if __name__ == "__main__":
    sys.exit(main())

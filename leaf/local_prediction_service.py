"""A local gRPC server with TensorFlow Serving's PredictionService and ModelService over SavedModels.

The TensorFlow Serving binary cannot be installed on the development and CI machines, so the
tests of ``leaf.tfserving_runner`` call this server instead. It implements the parts of
TensorFlow Serving's behaviour that the leaf relies on, with the same protobuf API
(``tensorflow-serving-api``):

- one model name over a base directory in TF Serving's layout (``<base>/<version>/``), polled
  every ``poll_interval_s``. The newest ``num_versions`` versions are served (TF Serving's
  ``latest`` version policy, default 1). A new version is loaded and warmed up before an old
  one is unloaded;
- a version is warmed up by running its ``assets.extra/tf_serving_warmup_requests``; a version
  that fails to load or to warm up is not served and GetModelStatus reports its error;
- ``Predict`` (pinned version or the newest), ``GetModelMetadata`` (``signature_def``) and
  ``GetModelStatus``, with TF Serving's status codes: NOT_FOUND for an unknown model or
  version, INVALID_ARGUMENT for inputs that do not match the signature;
- the gRPC message limit is ``max_message_bytes`` in both directions (default 4 MiB).

Run it with ``python -m leaf.local_prediction_service --model-name fmlite --model-base-path DIR``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from fmlite.signature import INPUT_NAMES, OUTPUT_NAME, SIGNATURE_NAME
from fmlite.warmup_records import read_warmup_records
from leaf.model_files import ModelLoadError, check_signature, model_versions
from leaf.tensor_protos import TensorProtoError, float_array_from_proto, float_tensor_proto

__all__ = ["LocalPredictionService", "main"]

logger = logging.getLogger(__name__)


@dataclass
class _Version:
    number: int
    state: str  # LOADING, AVAILABLE or END
    function: Any = None
    loaded: Any = None
    widths: dict[str, int] | None = None
    error: str = ""


class LocalPredictionService:
    """Serves one model name from ``base_path`` on ``host:port`` (port 0 picks a free one)."""

    def __init__(
        self,
        *,
        model_name: str,
        base_path: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        poll_interval_s: float = 1.0,
        num_versions: int = 1,
        max_message_bytes: int = 4 * 1024 * 1024,
        workers: int = 4,
    ):
        if num_versions < 1:
            raise ValueError(f"num_versions must be at least 1, got {num_versions}")
        self.model_name = model_name
        self.base_path = Path(base_path)
        self.host = host
        self.port = port
        self.poll_interval_s = poll_interval_s
        self.num_versions = num_versions
        self.max_message_bytes = max_message_bytes
        self.workers = workers
        self._versions: dict[int, _Version] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._server: Any = None
        self.predict_calls = 0

    # ---- version management ---------------------------------------------------------------

    def _load(self, number: int) -> _Version:
        path = self.base_path / str(number)
        started = time.perf_counter()
        try:
            loaded = tf.saved_model.load(str(path))
            function, widths = check_signature(loaded, path)
            records = read_warmup_records(path)
            for record in records:
                tensors = {name: tf.constant(record.inputs[name]) for name in INPUT_NAMES}
                scores = np.asarray(function(**tensors)[OUTPUT_NAME])
                if scores.shape[0] != record.rows:
                    raise ModelLoadError(f"warm-up request of {record.rows} rows returned {scores.shape[0]} scores")
        except Exception as error:  # TF Serving marks any load or warm-up failure as an error state
            logger.error("%s version %d failed to load: %s", self.model_name, number, error)
            return _Version(number, "END", error=f"{type(error).__name__}: {error}")
        logger.info("%s version %d available after %.2f s (%d warm-up requests)", self.model_name, number, time.perf_counter() - started, len(records))
        return _Version(number, "AVAILABLE", function=function, loaded=loaded, widths=widths)

    def poll_once(self) -> None:
        """Load the newest versions on disk and unload the rest once a newer one is available."""
        on_disk = model_versions(self.base_path)
        aspired = on_disk[-self.num_versions :]
        for number in aspired:
            if number in self._versions:
                continue
            with self._lock:
                self._versions = {**self._versions, number: _Version(number, "LOADING")}
            result = self._load(number)
            with self._lock:
                self._versions = {**self._versions, number: result}
        available = [n for n, v in self._versions.items() if v.state == "AVAILABLE" and n in aspired]
        if not available:
            return
        retired = [n for n, v in self._versions.items() if n not in aspired and v.state == "AVAILABLE"]
        if retired:
            with self._lock:
                self._versions = {**self._versions, **{n: _Version(n, "END") for n in retired}}
            logger.info("%s unloaded versions %s", self.model_name, retired)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.poll_once()
            except Exception:  # keep polling: a bad directory must not stop the server
                logger.exception("polling %s failed", self.base_path)

    def _serving(self, spec: Any, context: Any) -> _Version:
        if spec.name != self.model_name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: model {spec.name!r}")
        versions = self._versions
        if spec.HasField("version"):
            version = versions.get(spec.version.value)
            if version is None or version.state != "AVAILABLE":
                context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({spec.name}, {spec.version.value})")
            return version
        available = [n for n, v in versions.items() if v.state == "AVAILABLE"]
        if not available:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec.name})")
        return versions[max(available)]

    # ---- RPCs -----------------------------------------------------------------------------

    def Predict(self, request: Any, context: Any) -> Any:
        version = self._serving(request.model_spec, context)
        signature = request.model_spec.signature_name or SIGNATURE_NAME
        if signature != SIGNATURE_NAME:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"signature {signature!r} not found; the model has {SIGNATURE_NAME!r}")
        if set(request.inputs) != set(INPUT_NAMES):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"inputs are {sorted(request.inputs)}; the signature expects {sorted(INPUT_NAMES)}")
        arrays = {}
        for name in INPUT_NAMES:
            try:
                array = float_array_from_proto(request.inputs[name], name=name)
            except TensorProtoError as error:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            if array.ndim != 2 or array.shape[1] != version.widths[name]:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"input {name} has shape {list(array.shape)}; expected [-1, {version.widths[name]}]")
            arrays[name] = array
        if len({array.shape[0] for array in arrays.values()}) != 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "inputs have different numbers of rows")
        scores = np.asarray(version.function(**{name: tf.constant(value) for name, value in arrays.items()})[OUTPUT_NAME], np.float32)
        self.predict_calls += 1
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = version.number
        response.model_spec.signature_name = SIGNATURE_NAME
        response.outputs[OUTPUT_NAME].CopyFrom(float_tensor_proto(scores))
        return response

    def GetModelMetadata(self, request: Any, context: Any) -> Any:
        if list(request.metadata_field) != ["signature_def"]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"metadata_field must be ['signature_def'], got {list(request.metadata_field)}")
        version = self._serving(request.model_spec, context)
        signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
        for name in INPUT_NAMES:
            info = signature.inputs[name]
            info.name = f"serving_default_{name}:0"
            info.dtype = types_pb2.DT_FLOAT
            info.tensor_shape.CopyFrom(
                tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=-1), tensor_shape_pb2.TensorShapeProto.Dim(size=version.widths[name])])
            )
        output = signature.outputs[OUTPUT_NAME]
        output.name = "StatefulPartitionedCall:0"
        output.dtype = types_pb2.DT_FLOAT
        output.tensor_shape.dim.add(size=-1)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        signatures.signature_def[SIGNATURE_NAME].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = version.number
        response.metadata["signature_def"].Pack(signatures)
        return response

    def GetModelStatus(self, request: Any, context: Any) -> Any:
        if request.model_spec.name != self.model_name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {request.model_spec.name}")
        versions = self._versions
        wanted = [request.model_spec.version.value] if request.model_spec.HasField("version") else sorted(versions)
        if request.model_spec.HasField("version") and wanted[0] not in versions:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Could not find version {wanted[0]} of model {self.model_name}")
        states = get_model_status_pb2.ModelVersionStatus
        response = get_model_status_pb2.GetModelStatusResponse()
        for number in wanted:
            version = versions[number]
            status = response.model_version_status.add(version=number, state=getattr(states, version.state))
            if version.error:
                status.status.error_code = 13  # INTERNAL, as TF Serving reports a failed load
                status.status.error_message = version.error
        return response

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> int:
        """Load the current versions, start serving and polling; return the bound port."""
        self.poll_once()
        options = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
        ]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.workers), options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionServicer(self), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelServicer(self), server)
        port = server.add_insecure_port(f"{self.host}:{self.port}")
        if port == 0:
            raise OSError(f"cannot bind {self.host}:{self.port}")
        server.start()
        self._server = server
        self.port = port
        self._poller = threading.Thread(target=self._poll_loop, name="model-poller", daemon=True)
        self._poller.start()
        logger.info("local prediction service for %s on %s:%d (base %s)", self.model_name, self.host, port, self.base_path)
        return port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, grace_s: float = 1.0) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.stop(grace_s).wait()
            self._server = None
        if self._poller is not None:
            self._poller.join(timeout=5.0)


class _PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, service: LocalPredictionService):
        self.service = service

    def Predict(self, request: Any, context: Any) -> Any:
        return self.service.Predict(request, context)

    def GetModelMetadata(self, request: Any, context: Any) -> Any:
        return self.service.GetModelMetadata(request, context)


class _ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, service: LocalPredictionService):
        self.service = service

    def GetModelStatus(self, request: Any, context: Any) -> Any:
        return self.service.GetModelStatus(request, context)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leaf.local_prediction_service", description=__doc__.splitlines()[0])
    parser.add_argument("--model-name", required=True, help="model name clients put in model_spec.name")
    parser.add_argument("--model-base-path", required=True, help="base directory with <version>/saved_model.pb")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on; port 0 picks a free port (default %(default)s)")
    parser.add_argument("--port-file", help="write the bound port to this file once serving")
    parser.add_argument("--poll-interval-s", type=float, default=1.0, help="seconds between scans of the base directory (default %(default)s)")
    parser.add_argument("--num-versions", type=int, default=1, help="newest versions served at once (default %(default)s)")
    parser.add_argument("--max-message-bytes", type=int, default=4 * 1024 * 1024, help="gRPC message limit in bytes (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s local-tfs[%(process)d] %(levelname)s %(name)s: %(message)s")
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        parser.error(f"invalid --listen {args.listen!r}; expected HOST:PORT")
    service = LocalPredictionService(
        model_name=args.model_name,
        base_path=args.model_base_path,
        host=host or "127.0.0.1",
        port=int(port),
        poll_interval_s=args.poll_interval_s,
        num_versions=args.num_versions,
        max_message_bytes=args.max_message_bytes,
    )
    bound = service.start()
    if args.port_file:
        temporary = Path(f"{args.port_file}.tmp")
        temporary.write_text(f"{bound}\n")
        os.replace(temporary, args.port_file)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    service.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

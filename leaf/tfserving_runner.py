"""TensorFlow Serving runner: scores through PredictionService.Predict over gRPC.

TensorFlow Serving loads the same base directory as the leaf (``--model_base_path``) and runs
the warm-up records of each version before serving it. The runner pins every request to the
version it was created for (``model_spec.version``), so the scores of one leaf state always come
from one model version. It waits until ModelService.GetModelStatus reports that version
AVAILABLE, and checks the signature with GetModelMetadata.

A Predict message carries the user's sections once per pair (the signature is pairwise), about
``4 * (2 * meta_dim + 4 * embedding_dim)`` bytes per glance. A chunk is split into as many calls
as needed to keep each request under ``max_message_bytes`` (default 4 MiB, gRPC's default
receive limit), and the channel's own limits are raised to the same value.

If TensorFlow Serving has already unloaded the pinned version (its default version policy keeps
one version), Predict fails with NOT_FOUND and the runner raises ``ModelVersionUnavailable``. The
leaf then returns ``Unavailable`` for that chunk and polls for new versions at once. Serving TensorFlow Serving with
``model_version_policy { latest { num_versions: 2 } }`` keeps the previous version loaded until
every leaf has switched.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from fmlite.signature import INPUT_NAMES, OUTPUT_NAME, SIGNATURE_NAME
from leaf.model_files import ModelLoadError, latest_model_version, read_model_metadata
from leaf.profiles import ProfileCache, UserVectors
from leaf.runners import pair_inputs
from leaf.tensor_protos import float_array_from_proto, float_tensor_proto

__all__ = ["ModelVersionUnavailable", "TFServingError", "TFServingRunner", "rows_per_message"]

logger = logging.getLogger(__name__)

# Bytes kept free in each message for the protobuf framing, the model spec and the input names.
_MESSAGE_HEADROOM_BYTES = 64 * 1024


class TFServingError(RuntimeError):
    """A Predict call failed for a reason other than an unloaded version."""


class ModelVersionUnavailable(TFServingError):
    """TensorFlow Serving no longer serves the pinned model version."""


def rows_per_message(input_widths: Mapping[str, int], max_message_bytes: int) -> int:
    """Return the most pairs one Predict request may carry to stay under ``max_message_bytes``."""
    row_bytes = 4 * sum(input_widths[name] for name in INPUT_NAMES)
    rows = (max_message_bytes - _MESSAGE_HEADROOM_BYTES) // row_bytes
    if rows < 1:
        raise ValueError(f"max_message_bytes {max_message_bytes} is too small for one row of {row_bytes} bytes")
    return int(rows)


class TFServingRunner:
    """Calls TensorFlow Serving for one model version of one variant."""

    kind = "tfserving"

    def __init__(
        self,
        name: str,
        base: str | Path,
        *,
        address: str,
        model_name: str,
        version: int | None = None,
        timeout_s: float = 2.0,
        max_message_bytes: int = 4 * 1024 * 1024,
        wait_s: float = 120.0,
    ):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self._grpc = grpc
        self.name = name
        self.base = Path(base)
        self.address = address
        self.model_name = model_name
        number = version if version is not None else latest_model_version(self.base)
        self.version = str(number)
        self.path = self.base / self.version
        self.metadata = read_model_metadata(self.path)
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        self._channel = grpc.insecure_channel(address, options=options)
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        started = time.perf_counter()
        self._wait_available(number, wait_s)
        self.input_widths = self._signature_widths(number)
        self.rows_per_call = rows_per_message(self.input_widths, max_message_bytes)
        logger.info(
            "TensorFlow Serving at %s serves %s version %s (variant %s), ready after %.2f s; at most %d pairs per call",
            address, model_name, self.version, name, time.perf_counter() - started, self.rows_per_call,
        )

    def _wait_available(self, version: int, wait_s: float) -> None:
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        request.model_spec.version.value = version
        deadline = time.monotonic() + wait_s
        last = "no answer"
        while True:
            try:
                response = self._models.GetModelStatus(request, timeout=min(self.timeout_s, 5.0))
                states = {status.version: status for status in response.model_version_status}
                status = states.get(version)
                if status is not None and status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE:
                    return
                if status is not None and status.state == get_model_status_pb2.ModelVersionStatus.END and status.status.error_code:
                    raise ModelLoadError(
                        f"TensorFlow Serving at {self.address} failed to load {self.model_name} version {version}: {status.status.error_message}"
                    )
                last = "state " + (get_model_status_pb2.ModelVersionStatus.State.Name(status.state) if status else "unknown")
            except self._grpc.RpcError as error:
                last = f"{error.code().name}: {error.details()}"
            if time.monotonic() >= deadline:
                raise ModelLoadError(
                    f"TensorFlow Serving at {self.address} did not report {self.model_name} version {version} AVAILABLE within {wait_s:.0f} s ({last})"
                )
            time.sleep(0.2)

    def _signature_widths(self, version: int) -> dict[str, int]:
        from tensorflow.core.framework import types_pb2
        from tensorflow.core.protobuf import meta_graph_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = self.model_name
        request.model_spec.version.value = version
        try:
            response = self._predict.GetModelMetadata(request, timeout=self.timeout_s)
        except self._grpc.RpcError as error:
            raise ModelLoadError(f"GetModelMetadata of {self.model_name} version {version} at {self.address} failed: {error.code().name}: {error.details()}") from error
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        if SIGNATURE_NAME not in signatures.signature_def:
            raise ModelLoadError(f"{self.model_name} version {version} has no {SIGNATURE_NAME!r} signature; found {list(signatures.signature_def)}")
        signature: meta_graph_pb2.SignatureDef = signatures.signature_def[SIGNATURE_NAME]
        if set(signature.inputs) != set(INPUT_NAMES) or OUTPUT_NAME not in signature.outputs:
            raise ModelLoadError(
                f"{self.model_name} version {version} signature has inputs {sorted(signature.inputs)} and outputs {sorted(signature.outputs)}; "
                f"expected inputs {sorted(INPUT_NAMES)} and output {OUTPUT_NAME!r}"
            )
        widths = {}
        for name, info in signature.inputs.items():
            dims = [dim.size for dim in info.tensor_shape.dim]
            if info.dtype != types_pb2.DT_FLOAT or len(dims) != 2 or dims[1] < 1:
                raise ModelLoadError(f"{self.model_name} version {version} input {name!r} has dtype {info.dtype} and shape {dims}; expected DT_FLOAT [-1, width]")
            widths[name] = int(dims[1])
        return widths

    def bind(self, profiles: ProfileCache) -> "TFServingRunner":
        return self

    def _call(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.version.value = int(self.version)
        request.model_spec.signature_name = SIGNATURE_NAME
        for name in INPUT_NAMES:
            request.inputs[name].CopyFrom(float_tensor_proto(arrays[name]))
        try:
            response = self._predict.Predict(request, timeout=self.timeout_s)
        except self._grpc.RpcError as error:
            code = error.code()
            message = f"Predict of {self.model_name} version {self.version} at {self.address} failed: {code.name}: {error.details()}"
            if code in (self._grpc.StatusCode.NOT_FOUND, self._grpc.StatusCode.FAILED_PRECONDITION):
                raise ModelVersionUnavailable(message) from error
            raise TFServingError(message) from error
        if OUTPUT_NAME not in response.outputs:
            raise TFServingError(f"Predict response of {self.model_name} version {self.version} has no output {OUTPUT_NAME!r}")
        return float_array_from_proto(response.outputs[OUTPUT_NAME], name=OUTPUT_NAME).reshape(-1)

    def predict_arrays(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """Score rows of the six signature inputs, split into calls under the message limit."""
        count = len(arrays[INPUT_NAMES[0]])
        step = self.rows_per_call
        if count <= step:
            return self._call(arrays)
        parts = [self._call({name: value[start : start + step] for name, value in arrays.items()}) for start in range(0, count, step)]
        return np.concatenate(parts)

    def score(self, user: UserVectors, profiles: ProfileCache, rows: np.ndarray) -> np.ndarray:
        return self.predict_arrays(pair_inputs(user, profiles, rows)).astype(np.float32)

    def close(self) -> None:
        self._channel.close()

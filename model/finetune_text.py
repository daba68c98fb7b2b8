"""Siamese fine-tuning of the sentence encoder on glance text, and the pooling comparison.

Pairs come from glance content. The title and the abstract of one glance are a positive pair
(label 1). The title of one glance and the abstract of a glance of a different category are a
negative pair (label 0). Negatives never share a category, because two glances of one category
can be close in meaning and would make false negatives. Glances are split 80:20 before pairs
are built, so held-out pairs use glances never seen in training.

The objective is Sentence-BERT's softmax classifier over ``(u, v, |u - v|)``:
``P(y | u, v) = softmax(W [u; v; |u - v|])`` with ``u`` and ``v`` the pooled embeddings of the
two texts (``sentence_transformers.losses.SoftmaxLoss``). Training: batch 16, Adam, learning
rate 2e-5, linear warm-up over the first 15% of the steps and linear decay after it.

For each pooling (mean, max, the [CLS] token) the table gives the held-out log loss of that
classifier with the encoder frozen before and after fine-tuning: in both cases ``W`` alone is
fitted on the training pairs by logistic regression, so the two columns measure the
embeddings and nothing else. The log loss of the head ``W`` trained jointly during
fine-tuning is reported too; with a few hundred steps at 2e-5 that head has barely left its
random start, so it understates the encoder. The fine-tuned encoder of the pooling with the
lowest frozen-encoder log loss after fine-tuning is saved as a
sentence-transformers directory, which ``model.text_encoder.TextEncoder(model_path=...)`` and
so the glance encoder can load.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model.quality_names import POOLINGS

__all__ = ["FinetuneConfig", "PairSet", "PoolingResult", "FinetuneResult", "build_pairs", "run_finetune", "POOLINGS", "render_table"]

logger = logging.getLogger(__name__)

RESULT_FILE = "finetune-report.json"


@dataclass(frozen=True)
class FinetuneConfig:
    """Size and hyper-parameters of one fine-tuning run; defaults fit a few minutes on 2 CPU cores."""

    pairs: int = 2000
    heldout_share: float = 0.2
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_share: float = 0.15
    max_seq_length: int = 128
    poolings: tuple[str, ...] = POOLINGS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pairs < 8:
            raise ValueError(f"pairs must be at least 8, got {self.pairs}")
        if not 0 < self.heldout_share < 1:
            raise ValueError(f"heldout_share must be in (0, 1), got {self.heldout_share}")
        if self.epochs < 1 or self.batch_size < 2 or self.max_seq_length < 8:
            raise ValueError(f"epochs >= 1, batch_size >= 2 and max_seq_length >= 8 are required, got {self}")
        if not 0 <= self.warmup_share < 1:
            raise ValueError(f"warmup_share must be in [0, 1), got {self.warmup_share}")
        unknown = [name for name in self.poolings if name not in POOLINGS]
        if unknown or not self.poolings:
            raise ValueError(f"poolings must be a non-empty subset of {POOLINGS}, got {self.poolings}")


@dataclass(frozen=True)
class PairSet:
    """Text pairs with labels (1 = title and abstract of one glance)."""

    first: list[str]
    second: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def _pairs_from(frame: pd.DataFrame, count: int, rng: np.random.Generator) -> PairSet:
    positives = count // 2
    negatives = count - positives
    chosen = rng.choice(len(frame), size=positives, replace=len(frame) < positives)
    first = frame["title"].iloc[chosen].tolist()
    second = frame["abstract"].iloc[chosen].tolist()
    categories = frame["category"].to_numpy(dtype=object)
    titles, abstracts = [], []
    while len(titles) < negatives:
        a = rng.integers(0, len(frame), size=negatives)
        b = rng.integers(0, len(frame), size=negatives)
        differ = categories[a] != categories[b]
        titles += frame["title"].iloc[a[differ]].tolist()
        abstracts += frame["abstract"].iloc[b[differ]].tolist()
    first += titles[:negatives]
    second += abstracts[:negatives]
    labels = np.r_[np.ones(positives, np.int64), np.zeros(negatives, np.int64)]
    order = rng.permutation(count)
    return PairSet(first=[first[i] for i in order], second=[second[i] for i in order], labels=labels[order])


def build_pairs(glances: pd.DataFrame, *, pairs: int, heldout_share: float, seed: int) -> tuple[PairSet, PairSet]:
    """Return (training pairs, held-out pairs) from glances with a title, an abstract and a category.

    Needs at least two categories among the glances with both texts.
    """
    usable = glances.loc[(glances["title"].str.strip() != "") & (glances["abstract"].str.strip() != "")].reset_index(drop=True)
    if usable["category"].nunique() < 2:
        raise ValueError(f"negative pairs need glances of at least 2 categories; found {usable['category'].nunique()} among {len(usable)} glances with title and abstract")
    rng = np.random.default_rng(seed)
    heldout = rng.random(len(usable)) < heldout_share
    train_frame, heldout_frame = usable.loc[~heldout], usable.loc[heldout]
    if train_frame["category"].nunique() < 2 or heldout_frame["category"].nunique() < 2:
        raise ValueError(f"the {heldout_share:.0%} held-out split of {len(usable)} glances leaves one side with a single category; use more glances")
    heldout_pairs = max(4, int(round(pairs * heldout_share)))
    return _pairs_from(train_frame, pairs, rng), _pairs_from(heldout_frame, heldout_pairs, rng)


@dataclass(frozen=True)
class PoolingResult:
    """Held-out log loss of one pooling before and after fine-tuning, with the run's timing."""

    pooling: str
    log_loss_before: float
    log_loss_after: float
    accuracy_before: float
    accuracy_after: float
    log_loss_joint_head: float
    train_seconds: float
    steps: int


@dataclass(frozen=True)
class FinetuneResult:
    """The comparison table, the chosen pooling and where its fine-tuned encoder was saved."""

    rows: list[PoolingResult]
    chosen: str
    model_dir: Path
    config: FinetuneConfig
    train_pairs: int
    heldout_pairs: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": [asdict(row) for row in self.rows],
            "chosen_pooling": self.chosen,
            "model_dir": str(self.model_dir),
            "config": asdict(self.config),
            "train_pairs": self.train_pairs,
            "heldout_pairs": self.heldout_pairs,
            **self.extra,
        }


def _build_encoder(base: Path, pooling: str, max_seq_length: int) -> Any:
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(str(base), max_seq_length=max_seq_length)
    width = transformer.get_embedding_dimension()
    return SentenceTransformer(modules=[transformer, models.Pooling(width, pooling_mode=pooling)], device="cpu")


def _embed(model: Any, texts: list[str]) -> np.ndarray:
    return np.asarray(model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False), dtype=np.float64)


def _pair_features(model: Any, pairs: PairSet) -> np.ndarray:
    u, v = _embed(model, pairs.first), _embed(model, pairs.second)
    return np.hstack([u, v, np.abs(u - v)])


def _frozen_log_loss(model: Any, train: PairSet, heldout: PairSet, seed: int) -> tuple[float, float]:
    """Fit only the softmax classifier W on the frozen encoder; return held-out (log loss, accuracy)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    classifier = LogisticRegression(max_iter=2000, random_state=seed)
    classifier.fit(_pair_features(model, train), train.labels)
    probabilities = classifier.predict_proba(_pair_features(model, heldout))[:, 1]
    return float(log_loss(heldout.labels, probabilities, labels=[0, 1])), float(((probabilities > 0.5) == heldout.labels).mean())


def _finetune(model: Any, train: PairSet, heldout: PairSet, config: FinetuneConfig) -> tuple[float, float, int]:
    """Train encoder and classifier jointly with SoftmaxLoss; return the head's held-out log loss, seconds, steps."""
    import torch
    from sentence_transformers import losses
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(config.seed)
    loss_module = losses.SoftmaxLoss(model, embedding_dimension=model.get_embedding_dimension(), num_labels=2)
    optimizer = torch.optim.Adam(loss_module.parameters(), lr=config.learning_rate)
    batches_per_epoch = math.ceil(len(train) / config.batch_size)
    steps = batches_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=int(round(config.warmup_share * steps)), num_training_steps=steps)
    rng = np.random.default_rng(config.seed)

    def features(texts: list[str]) -> dict[str, Any]:
        return model.tokenize(texts)

    started = time.perf_counter()
    loss_module.train()
    for epoch in range(config.epochs):
        order = rng.permutation(len(train))
        for step in range(batches_per_epoch):
            rows = order[step * config.batch_size : (step + 1) * config.batch_size]
            first = features([train.first[i] for i in rows])
            second = features([train.second[i] for i in rows])
            labels = torch.as_tensor(train.labels[rows], dtype=torch.long)
            loss = loss_module([first, second], labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            if step % 50 == 0:
                logger.info("epoch %d step %d/%d: training loss %.4f", epoch + 1, step + 1, batches_per_epoch, float(loss.detach()))
    seconds = time.perf_counter() - started

    loss_module.eval()
    probabilities = []
    with torch.no_grad():
        for start in range(0, len(heldout), 64):
            first = features(heldout.first[start : start + 64])
            second = features(heldout.second[start : start + 64])
            _, logits = loss_module([first, second], None)
            probabilities.append(torch.softmax(logits, dim=1)[:, 1].numpy())
    probability = np.clip(np.concatenate(probabilities).astype(np.float64), 1e-7, 1 - 1e-7)
    labels = heldout.labels
    log_loss = float(-(labels * np.log(probability) + (1 - labels) * np.log(1 - probability)).mean())
    return log_loss, seconds, steps


def run_finetune(glances: pd.DataFrame, *, out: str | os.PathLike[str], config: FinetuneConfig, base_model: Path | None = None) -> FinetuneResult:
    """Compare the poolings, fine-tune each, save the best fine-tuned encoder under ``out/model``."""
    from model.text_encoder import default_model_path

    os.environ["HF_HUB_OFFLINE"] = "1"
    base = Path(base_model) if base_model is not None else default_model_path()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = build_pairs(glances, pairs=config.pairs, heldout_share=config.heldout_share, seed=config.seed)
    logger.info("fine-tuning %s on %d pairs, %d held out", base, len(train), len(heldout))

    rows: list[PoolingResult] = []
    best: tuple[float, str, Any] | None = None
    for pooling in config.poolings:
        model = _build_encoder(base, pooling, config.max_seq_length)
        loss_before, accuracy_before = _frozen_log_loss(model, train, heldout, config.seed)
        loss_joint, seconds, steps = _finetune(model, train, heldout, config)
        loss_after, accuracy_after = _frozen_log_loss(model, train, heldout, config.seed)
        rows.append(PoolingResult(pooling, loss_before, loss_after, accuracy_before, accuracy_after, loss_joint, round(seconds, 1), steps))
        logger.info("pooling %s: held-out log loss %.4f before, %.4f after fine-tuning (%.0f s)", pooling, loss_before, loss_after, seconds)
        if best is None or loss_after < best[0]:
            best = (loss_after, pooling, model)
    assert best is not None
    model_dir = out / "model"
    best[2].save(str(model_dir))
    result = FinetuneResult(rows=rows, chosen=best[1], model_dir=model_dir, config=config, train_pairs=len(train), heldout_pairs=len(heldout), extra={"base_model": str(base)})
    (out / RESULT_FILE).write_text(json.dumps(result.to_json(), indent=1))
    (out / "finetune-report.md").write_text(render_table(result) + "\n")
    return result


def render_table(result: FinetuneResult) -> str:
    """Return the pooling comparison as a Markdown table."""
    lines = [
        f"Held-out log loss of the softmax classifier over (u, v, |u - v|), fitted on the frozen encoder, on {result.heldout_pairs} pairs "
        f"({result.train_pairs} training pairs, batch {result.config.batch_size}, Adam, learning rate {result.config.learning_rate:g}, "
        f"warm-up {result.config.warmup_share:.0%} of {result.rows[0].steps if result.rows else 0} steps).",
        "",
        "| pooling | log loss before | log loss after | accuracy before | accuracy after | log loss of the jointly trained head | fine-tuning seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result.rows:
        marker = " (saved)" if row.pooling == result.chosen else ""
        lines.append(
            f"| {row.pooling}{marker} | {row.log_loss_before:.3f} | {row.log_loss_after:.3f} | {row.accuracy_before:.3f} | {row.accuracy_after:.3f} | {row.log_loss_joint_head:.3f} | {row.train_seconds:.0f} |"
        )
    return "\n".join(lines)

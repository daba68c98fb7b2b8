"""``fmlite finetune-text`` on a tiny pair set: pairs, pooling table, saved encoder, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from model.cli_quality import main_finetune_text
from model.finetune_text import FinetuneConfig, build_pairs


@pytest.fixture(scope="module")
def finetuned(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune")
    code = main_finetune_text(
        ["--out", str(out), "--data", str(sample_dir), "--pairs", "24", "--max-seq-length", "24", "--poolings", "mean,cls", "--log-level", "WARNING"]
    )
    return code, out


def _glances(categories: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "title": [f"title {index}" for index in range(len(categories))],
            "abstract": [f"abstract {index}" for index in range(len(categories))],
            "category": categories,
        }
    )


def test_negative_pairs_never_share_a_category():
    frame = _glances(["news", "sports", "travel", "news", "sports", "travel"] * 20)
    train, heldout = build_pairs(frame, pairs=200, heldout_share=0.25, seed=1)
    category_of_title = dict(zip(frame["title"], frame["category"]))
    category_of_abstract = dict(zip(frame["abstract"], frame["category"]))
    for pairs in (train, heldout):
        for first, second, label in zip(pairs.first, pairs.second, pairs.labels):
            if label == 1:
                assert first.split()[1] == second.split()[1]
            else:
                assert category_of_title[first] != category_of_abstract[second]
    assert len(train) == 200
    assert train.labels.sum() == 100


def test_heldout_pairs_use_unseen_glances():
    frame = _glances(["news", "sports", "travel", "autos"] * 50)
    train, heldout = build_pairs(frame, pairs=300, heldout_share=0.2, seed=4)
    assert not set(train.first) & set(heldout.first)


def test_single_category_rejected():
    with pytest.raises(ValueError, match="at least 2 categories"):
        build_pairs(_glances(["news"] * 30), pairs=20, heldout_share=0.2, seed=0)


@pytest.mark.parametrize(("field", "value"), [("pairs", 2), ("heldout_share", 1.0), ("poolings", ("attention",)), ("warmup_share", 1.0)])
def test_invalid_config_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        FinetuneConfig(**{field: value})


def test_table_has_each_pooling(finetuned):
    code, out = finetuned
    assert code == 0
    report = json.loads((out / "finetune-report.json").read_text())
    assert [row["pooling"] for row in report["rows"]] == ["mean", "cls"]
    for row in report["rows"]:
        for key in ("log_loss_before", "log_loss_after", "log_loss_joint_head"):
            assert 0 < row[key] < 5, (row["pooling"], key)
    assert report["config"]["batch_size"] == 16
    assert report["config"]["learning_rate"] == 2e-5
    assert report["config"]["warmup_share"] == 0.15
    assert report["chosen_pooling"] in ("mean", "cls")
    assert "| pooling |" in (out / "finetune-report.md").read_text()


def test_saved_encoder_feeds_glance_encoder(finetuned, tmp_path):
    from model.text_encoder import TextEncoder

    _, out = finetuned
    encoder = TextEncoder(model_path=out / "model", cache_dir=tmp_path)
    vectors = encoder.encode(["Stocks rally as markets open", "Local team wins the final"])
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.name.startswith("model@")

"""Native Parquet datasets with image captions, the captioning step and the image embedding."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.captions import CaptionerUnavailable, fill_captions, load_captioner
from model.mind import read_mind
from model.parquet import PARQUET_FILES, ParquetFormatError, read_parquet_dataset, write_parquet_dataset
from model.tables import GlanceTable, HistoryTable, InteractionTable, SourceData

CAPTIONS = {0: "a red bus on a city street", 1: "two players fighting for the ball", 2: "a bowl of soup on a wooden table"}


@pytest.fixture(scope="module")
def small_source(sample_dir) -> SourceData:
    data = read_mind(sample_dir)
    glances = data.glances.frame.iloc[:40].copy()
    for row, caption in CAPTIONS.items():
        glances.iat[row, glances.columns.get_loc("image_caption")] = caption
    interactions = data.interactions.frame.iloc[:3000]
    history = data.history.frame.iloc[:500]
    return SourceData(GlanceTable(glances), InteractionTable(interactions), HistoryTable(history))


def _image(path: Path, seed: int) -> None:
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((24, 30, 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def parquet_dir(small_source, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("parquet")
    (directory / "images").mkdir()
    ids = small_source.glances.frame["glance_id"].tolist()
    image_paths = {}
    for offset in range(3, 7):
        name = f"images/{ids[offset]}.png"
        _image(directory / name, offset)
        image_paths[ids[offset]] = name
    image_paths[ids[7]] = "images/missing.png"
    write_parquet_dataset(small_source, directory, image_paths=image_paths)
    return directory


@pytest.fixture(scope="module")
def tiny_captioner(tmp_path_factory) -> Path:
    """Save a randomly initialised ViT + GPT-2 captioner (a few thousand weights) to a directory."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, PreTrainedTokenizerFast, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig, ViTImageProcessor

    words = ["a", "photo", "of", "the", "city", "river", "dog", "market", "[UNK]", "<s>", "</s>", "<pad>"]
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    encoder = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    decoder = GPT2Config(vocab_size=len(words), n_positions=40, n_embd=32, n_layer=1, n_head=2, bos_token_id=9, eos_token_id=10, pad_token_id=11)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 9, 11, 10
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(config=config)
    generation = model.generation_config
    generation.decoder_start_token_id, generation.pad_token_id, generation.eos_token_id = 9, 11, 10
    # Random weights would often end at once; force a few word tokens so captions are non-empty.
    generation.min_new_tokens = 3
    generation.suppress_tokens = [8, 9, 11]
    directory = tmp_path_factory.mktemp("captioner")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def test_round_trip_keeps_tables(small_source, parquet_dir):
    data = read_parquet_dataset(parquet_dir)
    pd.testing.assert_frame_equal(data.glances.frame, small_source.glances.frame)
    pd.testing.assert_frame_equal(data.interactions.frame, small_source.interactions.frame)
    pd.testing.assert_frame_equal(data.history.frame, small_source.history.frame)


def test_absent_captioner_reported(parquet_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="model.parquet"):
        data = read_parquet_dataset(parquet_dir)
    assert int(data.glances.frame["image_caption"].notna().sum()) == len(CAPTIONS)
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "5 glances have an image but no caption" in messages
    assert "no captioner directory configured" in messages


def test_missing_captioner_directory_reported(tmp_path):
    with pytest.raises(CaptionerUnavailable, match="not found"):
        load_captioner(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptionerUnavailable, match="no config.json"):
        load_captioner(tmp_path / "empty")


def test_captioner_fills_captions(parquet_dir, tiny_captioner):
    from model.parquet import read_glance_frame

    frame, report = fill_captions(read_glance_frame(parquet_dir), image_root=parquet_dir, model_dir=tiny_captioner)
    assert report.images_without_caption == 5
    assert report.captioned == 4
    assert report.missing_files == 1
    assert report.uncaptioned == 1
    assert report.captioner.startswith("image-to-text@")
    captioned = frame.iloc[3:7]["image_caption"]
    assert captioned.notna().all()
    assert all(isinstance(text, str) and text for text in captioned)
    assert pd.isna(frame.iloc[7]["image_caption"])


def test_read_with_captioner(parquet_dir, tiny_captioner):
    data = read_parquet_dataset(parquet_dir, captioner_dir=tiny_captioner)
    assert int(data.glances.frame["image_caption"].notna().sum()) == len(CAPTIONS) + 4


def test_caption_becomes_image_embedding(parquet_dir, quality_text_cache):
    from model.glance_encoder import encode_glances
    from model.text_encoder import TextEncoder

    data = read_parquet_dataset(parquet_dir)
    encoder = TextEncoder(cache_dir=quality_text_cache)
    features = encode_glances(data.glances, text_encoder=encoder)
    expected = encoder.encode([CAPTIONS[0]])[0]
    np.testing.assert_allclose(features.image[0], expected, atol=1e-6)
    assert features.has_image[: len(CAPTIONS)].all()
    assert not features.has_image[len(CAPTIONS) :].any()
    assert not features.image[len(CAPTIONS) :].any()


def test_evaluation_reads_parquet(parquet_dir):
    from model.evaluate_data import read_source

    assert len(read_source(parquet_dir).glances) == 40


def test_missing_column_rejected(small_source, tmp_path):
    write_parquet_dataset(small_source, tmp_path)
    table = pq.read_table(tmp_path / PARQUET_FILES["glances"]).drop(["title"])
    pq.write_table(table, tmp_path / PARQUET_FILES["glances"])
    with pytest.raises(ParquetFormatError, match=r"missing columns \['title'\]"):
        read_parquet_dataset(tmp_path)


def test_bad_label_rejected(small_source, tmp_path):
    write_parquet_dataset(small_source, tmp_path)
    frame = small_source.interactions.frame.copy()
    frame.loc[0, "peek"] = 2
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / PARQUET_FILES["interactions"])
    with pytest.raises(ParquetFormatError, match="'peek' must be 0 or 1"):
        read_parquet_dataset(tmp_path)


def test_not_parquet_rejected(small_source, tmp_path):
    write_parquet_dataset(small_source, tmp_path)
    (tmp_path / PARQUET_FILES["interactions"]).write_text("impression_id,user_id\n1,U1\n")
    with pytest.raises(ParquetFormatError, match="not a readable Parquet file"):
        read_parquet_dataset(tmp_path)


def test_missing_interactions_rejected(small_source, tmp_path):
    write_parquet_dataset(small_source, tmp_path)
    (tmp_path / PARQUET_FILES["interactions"]).unlink()
    with pytest.raises(ParquetFormatError, match="file not found"):
        read_parquet_dataset(tmp_path)

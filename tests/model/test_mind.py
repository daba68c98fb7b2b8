"""MIND reader: counts on the real sample, optional files, and rejection of malformed rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.mind import MindFormatError, read_behaviors, read_mind, url_key
from model.tables import GlanceTable, InteractionTable, TableSchemaError


def test_sample_counts_match_readme(mind_data):
    interactions = mind_data.interactions.frame
    assert interactions["impression_id"].nunique() == 5_000
    assert interactions["user_id"].nunique() == 4_637
    assert len(interactions) == 189_359
    assert int(interactions["peek"].sum()) == 7_542


def test_sample_glances(mind_data):
    glances = mind_data.glances.frame
    assert len(glances) == 2_000 + 121
    news = glances.iloc[:2_000]
    assert news["category"].nunique() == 15
    assert news["subcategory"].nunique() == 143
    assert glances["format"].value_counts().to_dict() == {"ar": 1_772, "ss": 187, "vi": 162}
    assert glances["image_caption"].isna().all()


def test_sample_time_range_and_dtypes(mind_data):
    interactions = mind_data.interactions.frame
    assert mind_data.first_day() == pd.Timestamp("2019-11-09")
    assert mind_data.last_day() == pd.Timestamp("2019-11-14")
    assert interactions["timestamp"].dtype == np.dtype("datetime64[ns]")
    assert interactions["peek"].dtype == np.int8
    # First row of behaviors.tsv: 58376, U81994, 11/12/2019 2:14:46 PM, 17 candidates, 2 clicked.
    first = interactions[interactions["impression_id"] == 58376]
    assert (first["timestamp"] == pd.Timestamp("2019-11-12 14:14:46")).all()
    assert len(first) == 17
    assert first["glance_id"].tolist()[:3] == ["N43266", "N58363", "N6975"]
    assert first["peek"].tolist()[:3] == [0, 0, 1]


def test_sample_history_once_per_user(mind_data):
    history = mind_data.history.frame
    assert len(history) == 138_932
    assert history["user_id"].nunique() == 4_536
    u81994 = history.loc[history["user_id"] == "U81994", "glance_id"].tolist()
    assert u81994[:3] == ["N138", "N64727", "N138"]
    assert len(u81994) == 97


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://assets.msn.com/labs/mind/AAGH0ET.html", ("AAGH0ET", None)),
        ("https://www.msn.com/en-us/news/ss-AAGH0ET?ocid=chopendata", ("AAGH0ET", "ss")),
        ("https://www.msn.com/en-us/video/vi-BBWz7oN", ("BBWz7oN", "vi")),
        ("https://www.msn.com/en-us/news/us/some-title/ar-AAJqbX1?li=BBnb7Kz", ("AAJqbX1", "ar")),
        ("", (None, None)),
        ("https://example.com/a b", (None, None)),
    ],
)
def test_url_key(url, expected):
    assert url_key(url) == expected


def _link_sample(sample_dir: Path, target: Path, names: list[str]) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        (target / name).symlink_to(sample_dir / name)
    return target


def test_optional_files_absent(sample_dir, tmp_path):
    directory = _link_sample(sample_dir, tmp_path / "mind", ["behaviors.tsv", "news.tsv"])
    data = read_mind(directory)
    assert len(data.glances) == 2_000
    assert data.glances.frame["format"].isna().all()
    assert len(data.interactions) == 189_359


def _small_copy(sample_dir: Path, target: Path, rows: int = 4) -> Path:
    """Write the first ``rows`` lines of each real file (and the whole doc_type.json) to ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("behaviors.tsv", "news.tsv", "news-extra.tsv"):
        lines = (sample_dir / name).read_text(encoding="utf-8").splitlines()[:rows]
        (target / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (target / "doc_type.json").write_text((sample_dir / "doc_type.json").read_text(encoding="utf-8"))
    return target


def _replace_line(path: Path, number: int, edit) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[number - 1] = edit(lines[number - 1])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _set_field(index: int, value: str):
    def edit(line: str) -> str:
        fields = line.split("\t")
        fields[index] = value
        return "\t".join(fields)

    return edit


def test_small_copy_reads_cleanly(sample_dir, tmp_path):
    data = read_mind(_small_copy(sample_dir, tmp_path / "mind"))
    assert len(data.glances) == 8
    assert data.interactions.frame["impression_id"].nunique() == 4


MALFORMED_ROWS = [
    ("behaviors.tsv", lambda line: line.rsplit("\t", 1)[0], "columns"),
    ("behaviors.tsv", lambda line: line + "\textra", "columns"),
    ("behaviors.tsv", lambda line: "", "columns"),
    ("behaviors.tsv", _set_field(0, "12x"), "impression_id"),
    ("behaviors.tsv", _set_field(0, "58376"), "impression_id"),
    ("behaviors.tsv", _set_field(1, ""), "user_id"),
    ("behaviors.tsv", _set_field(1, " U1"), "user_id"),
    ("behaviors.tsv", _set_field(2, "13/45/2019 2:14:46 PM"), "time"),
    ("behaviors.tsv", _set_field(2, "2019-11-12 14:14:46"), "time"),
    ("behaviors.tsv", _set_field(4, ""), "impressions"),
    ("behaviors.tsv", _set_field(4, "N1-0 N2-2"), "impressions"),
    ("behaviors.tsv", _set_field(4, "N1-0 N2"), "impressions"),
    ("news.tsv", lambda line: line.rsplit("\t", 1)[0], "columns"),
    ("news.tsv", _set_field(0, ""), "news_id"),
    ("news.tsv", _set_field(1, ""), "category"),
    ("news.tsv", _set_field(2, " "), "subcategory"),
    ("news.tsv", _set_field(0, "N34700"), "news_id"),
    ("news-extra.tsv", _set_field(0, "N34700"), "news_id"),
]


@pytest.mark.parametrize(("name", "edit", "field"), MALFORMED_ROWS)
def test_malformed_row_rejected(sample_dir, tmp_path, name, edit, field):
    directory = _small_copy(sample_dir, tmp_path / "mind")
    _replace_line(directory / name, 3, edit)
    with pytest.raises(MindFormatError) as caught:
        read_mind(directory)
    error = caught.value
    assert error.path == str(directory / name)
    assert error.line == 3
    assert error.field == field
    assert f"{directory / name}:3" in str(error)


def test_invalid_utf8_rejected(sample_dir, tmp_path):
    directory = _small_copy(sample_dir, tmp_path / "mind")
    path = directory / "behaviors.tsv"
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"U", b"\xff", 1)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(MindFormatError) as caught:
        read_behaviors(path)
    assert caught.value.line == 2
    assert caught.value.field == "line"


def test_crlf_line_endings_accepted(sample_dir, tmp_path):
    directory = _small_copy(sample_dir, tmp_path / "mind")
    path = directory / "behaviors.tsv"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    interactions, _ = read_behaviors(path)
    assert interactions.frame["impression_id"].nunique() == 4


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ('{"AAJte4f": "podcast"}', "AAJte4f"),
        ('{"AAJte4f": "ar",', "json"),
        ('["ar", "vi"]', "json"),
    ],
)
def test_bad_doc_type_rejected(sample_dir, tmp_path, content, field):
    directory = _small_copy(sample_dir, tmp_path / "mind")
    (directory / "doc_type.json").write_text(content)
    with pytest.raises(MindFormatError) as caught:
        read_mind(directory)
    assert caught.value.field == field
    assert caught.value.path == str(directory / "doc_type.json")


def test_missing_files_rejected(sample_dir, tmp_path):
    with pytest.raises(MindFormatError) as caught:
        read_mind(tmp_path / "absent")
    assert caught.value.field == "directory"

    directory = _link_sample(sample_dir, tmp_path / "no-behaviors", ["news.tsv"])
    with pytest.raises(MindFormatError) as caught:
        read_mind(directory)
    assert caught.value.field == "file"
    assert caught.value.path.endswith("behaviors.tsv")

    directory = _link_sample(sample_dir, tmp_path / "no-news", ["behaviors.tsv"])
    with pytest.raises(MindFormatError) as caught:
        read_mind(directory)
    assert caught.value.path.endswith("news.tsv")


def test_tables_reject_bad_columns():
    with pytest.raises(TableSchemaError, match="missing columns"):
        GlanceTable(pd.DataFrame({"glance_id": ["N1"]}))
    frame = pd.DataFrame(
        {
            "impression_id": [1, 1],
            "user_id": ["U1", "U1"],
            "glance_id": ["N1", "N2"],
            "timestamp": pd.to_datetime(["2019-11-09 10:00", "2019-11-09 10:00"]),
            "peek": [0, 2],
        }
    )
    with pytest.raises(TableSchemaError, match="'peek' must be 0 or 1"):
        InteractionTable(frame)
    with pytest.raises(TableSchemaError, match="must be datetime64"):
        InteractionTable(frame.assign(peek=[0, 1], timestamp=["2019-11-09", "2019-11-09"]))
    with pytest.raises(TableSchemaError, match="missing values"):
        InteractionTable(frame.assign(peek=[0, 1], user_id=["U1", None]))
    with pytest.raises(TableSchemaError, match="must hold strings"):
        InteractionTable(frame.assign(peek=[0, 1], glance_id=[1, 2]))

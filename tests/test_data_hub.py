"""The loaders' hub path, through the real ``datasets.load_dataset``, on local copies.

``tests/hub_copies.py`` writes each hub data set's published layout and features (rows our
own, bad rows included). The loaders get the folder as ``hub_id`` and call
``datasets.load_dataset`` on it exactly as they call it on the hub; nothing is patched but
the cache folder.
"""

from __future__ import annotations

import hub_copies
import pytest

from phi2kit.data.files import DataError
from phi2kit.data.oasst import load_oasst
from phi2kit.data.sentiment import load_financial_news
from phi2kit.data.webglm import load_webglm


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return hub_copies.write_all(tmp_path_factory.mktemp("hub"))


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """Keep the Arrow cache that ``load_dataset`` writes out of the user's HF cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))


def test_copies_have_the_published_features(hub):
    import datasets

    oasst = datasets.load_dataset(str(hub["oasst1"]), split="train")
    assert oasst.features == hub_copies.OASST_FEATURES and len(oasst.column_names) == 18
    webglm = datasets.load_dataset(str(hub["webglm"]), split="validation")
    assert webglm.features == hub_copies.WEBGLM_FEATURES
    export = datasets.load_dataset(
        str(hub["financial_phrasebank"]), data_dir="sentences_50agree", split="train"
    )
    assert export.features["label"].names == ["negative", "neutral", "positive"]


def test_oasst_hub_rows_skip_bad_rows_and_count_them(hub):
    hub_id = str(hub["oasst1"])
    with pytest.raises(DataError, match=r"row 11, field 'text': missing or not a string"):
        load_oasst(None, hub_id=hub_id, lang="en")
    threads = load_oasst(None, hub_id=hub_id, lang="en", skip_bad=True)
    assert threads == hub_copies.OASST_THREADS
    assert threads.n_skipped == hub_copies.OASST_BAD_TRAIN
    assert "parent gone not found" in threads.problems[1]
    assert len(load_oasst(None, hub_id=hub_id, skip_bad=True)) == 3  # and one in German
    assert load_oasst(None, hub_id=hub_id, split="validation")[0][0][0] == "prompter"


def test_webglm_hub_rows_skip_bad_rows_and_count_them(hub):
    hub_id = str(hub["webglm"])
    with pytest.raises(DataError, match=r"row 2, field 'references': empty reference list"):
        load_webglm(None, "train", hub_id=hub_id)
    loaded = load_webglm(None, "train", hub_id=hub_id, skip_bad=True)
    assert loaded == hub_copies.WEBGLM_GOOD["train"]
    assert [p.split(": ", 1)[1] for p in loaded.problems] == [
        "empty reference list",
        "citation [3] is outside 1..1 (the number of references)",
        "expected a string, got NoneType",
    ]
    assert load_webglm(None, "train", hub_id=hub_id, skip_bad=True, limit=1).n_skipped == 0
    for split in ("validation", "test"):
        assert load_webglm(None, split, hub_id=hub_id) == hub_copies.WEBGLM_GOOD[split]


def test_phrasebank_hub_export_skips_bad_rows_and_counts_them(hub):
    hub_id = str(hub["financial_phrasebank"])
    with pytest.raises(DataError, match=r"row 3, field 'sentence': missing column"):
        load_financial_news(None, hub_id=hub_id)
    df = load_financial_news(None, hub_id=hub_id, skip_bad=True)
    words = ["negative", "neutral", "positive"]
    assert list(df["text"]) == [s for s, _ in hub_copies.PHRASEBANK_GOOD]
    assert list(df["label"]) == [words[k] for _, k in hub_copies.PHRASEBANK_GOOD]
    assert df.attrs["skipped"] == 2 and "unknown label -1" in df.attrs["problems"][1]

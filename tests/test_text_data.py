"""sal_hf.text_data: fortune files parse into entries; splits are deterministic, disjoint and stratified; the hub
path calls `datasets.load_dataset` as run_clm.py does (mocked: never downloads); the tokenizer round-trips text,
reloads through AutoTokenizer offline, and counts bytes exactly for bits per byte."""

import math

import numpy as np
import pytest
import torch

from sal_hf import text_data
from sal_hf.text_data import (
    bits_per_byte,
    group_texts,
    load_fortunes_classification,
    load_fortunes_lm,
    load_text_dataset,
    predicted_bytes,
    read_fortunes,
    token_byte_lengths,
    train_tokenizer,
)


needs_fortunes = pytest.mark.skipif(
    not text_data.fortunes_available(),
    reason=f"Debian's fortunes are not installed in {text_data.FORTUNES_DIR} (`{text_data.FORTUNES_INSTALL}`)",
)


def write_category(folder, name, entries, trailing_percent=True):
    text = "\n%\n".join(entries) + ("\n%\n" if trailing_percent else "\n")
    (folder / name).write_text(text, encoding="utf-8")


@pytest.fixture
def tiny_fortunes(tmp_path):
    """Three categories (30, 20 and 4 entries) plus what a real folder also holds: strfile indexes and .u8 links."""
    write_category(tmp_path, "apples", [f"Apple saying {i}.\n\t\t-- Someone {i}" for i in range(30)])
    write_category(tmp_path, "bytes", [f"Byte {i} is {i:08b}." for i in range(20)] + ["Shared line."], False)
    write_category(tmp_path, "cats", ["Cat one.", "Cat two.", "Cat two.", "Shared line."])
    (tmp_path / "apples.dat").write_bytes(b"\x00\x01binary index")
    (tmp_path / "apples.u8").symlink_to(tmp_path / "apples")
    return tmp_path


def test_read_fortunes_splits_on_percent_lines_and_skips_indexes(tiny_fortunes):
    categories = read_fortunes(tiny_fortunes)
    assert list(categories) == ["apples", "bytes", "cats"]
    assert len(categories["apples"]) == 30 and len(categories["bytes"]) == 21
    assert categories["apples"][3] == "Apple saying 3.\n\t\t-- Someone 3"
    assert categories["cats"] == ["Cat one.", "Cat two.", "Cat two.", "Shared line."]


def test_missing_fortunes_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y fortunes fortunes-min"):
        read_fortunes(tmp_path / "nowhere")


def test_lm_splits_are_deterministic_disjoint_and_cover_every_unique_entry(tiny_fortunes):
    first = load_fortunes_lm(seed=3, validation_size=0.1, test_size=0.1, data_dir=tiny_fortunes)
    again = load_fortunes_lm(seed=3, validation_size=0.1, test_size=0.1, data_dir=tiny_fortunes)
    other = load_fortunes_lm(seed=4, validation_size=0.1, test_size=0.1, data_dir=tiny_fortunes)
    splits = {name: list(first[name]["text"]) for name in ("train", "validation", "test")}
    assert splits == {name: list(again[name]["text"]) for name in splits}
    assert splits["validation"] != list(other["validation"]["text"])
    unique = set(e for entries in read_fortunes(tiny_fortunes).values() for e in entries)
    assert sum(len(v) for v in splits.values()) == len(unique) == 53  # "Cat two." and "Shared line." kept once
    assert set().union(*map(set, splits.values())) == unique
    assert len(splits["validation"]) == len(splits["test"]) == 5


def test_classification_is_stratified_and_drops_ambiguous_entries(tiny_fortunes):
    data = load_fortunes_classification(min_entries=10, validation_size=0.2, test_size=0.2, data_dir=tiny_fortunes)
    assert data["train"].features["label"].names == ["apples", "bytes"]  # cats has 2 unique entries
    texts = [t for split in data.values() for t in split["text"]]
    assert "Shared line." not in texts and len(texts) == len(set(texts)) == 50
    for split in data.values():  # 30:20 in every split
        counts = np.bincount(split["label"], minlength=2)
        assert counts[0] / counts.sum() == pytest.approx(0.6, abs=0.05)
    chosen = load_fortunes_classification(categories=["bytes", "apples"], min_entries=1000, data_dir=tiny_fortunes)
    assert chosen["train"].features["label"].names == ["apples", "bytes"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_entries": 100}, "at least 2 categories"),
        ({"categories": ["apples", "dogs"]}, "Unknown fortune categories"),
        ({"validation_size": 0.6, "test_size": 0.5}, "leave a training split"),
    ],
)
def test_classification_rejects_bad_arguments(tiny_fortunes, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_fortunes_classification(data_dir=tiny_fortunes, **kwargs)


def test_hub_path_calls_load_dataset_like_run_clm(monkeypatch):
    """`--dataset_name wikitext --dataset_config_name wikitext-2-raw-v1` goes to `datasets.load_dataset` (mocked
    here, so nothing is downloaded); a dataset without a validation split gets one sliced from train."""
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None, **kwargs):
        calls.append((name, config, split))
        rows = {"text": [f"line {i}" for i in range(20)]}
        if split is not None:
            return datasets.Dataset.from_dict(rows)
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    raw = load_text_dataset("wikitext", "wikitext-2-raw-v1", validation_split_percentage=10)
    assert calls[0] == ("wikitext", "wikitext-2-raw-v1", None)
    assert ("wikitext", "wikitext-2-raw-v1", "train[:10%]") in calls
    assert ("wikitext", "wikitext-2-raw-v1", "train[10%:]") in calls
    assert set(raw) >= {"train", "validation"}


def test_text_files_load_offline(tmp_path):
    (tmp_path / "train.txt").write_text("first line\nsecond line\n", encoding="utf-8")
    (tmp_path / "val.txt").write_text("held out\n", encoding="utf-8")
    raw = load_text_dataset(train_file=str(tmp_path / "train.txt"), validation_file=str(tmp_path / "val.txt"))
    assert list(raw["train"]["text"]) == ["first line\n", "second line\n"]
    assert list(raw["validation"]["text"]) == ["held out\n"]
    # JSON Lines, as run_clm.py users keep them (the extension was taken as a builder name and sent to the Hub).
    lines = "\n".join(f'{{"text": "line {i}"}}' for i in range(20))
    (tmp_path / "train.jsonl").write_text(lines, encoding="utf-8")
    assert load_text_dataset(train_file=str(tmp_path / "train.jsonl"))["train"][0]["text"].startswith("line")
    with pytest.raises(ValueError, match="a .txt, .csv, .json or .jsonl file; got .parquet"):
        load_text_dataset(train_file=str(tmp_path / "train.parquet"))
    with pytest.raises(ValueError, match="needs a train_file too"):  # was ignored: the fortunes came back
        load_text_dataset(validation_file=str(tmp_path / "val.txt"))


def test_text_files_that_cannot_make_the_splits_are_named(tmp_path):
    """A file under 20 lines met datasets' 'Instruction "train[:5%]" corresponds to no data!'; a percentage of 100 or
    more a slicing error, -5 swapped the splits silently; an empty or non-UTF-8 file a DatasetGenerationError."""
    ten = tmp_path / "ten.txt"
    ten.write_text("".join(f"line {i}\n" for i in range(10)), encoding="utf-8")
    with pytest.raises(ValueError, match=r"ten.txt' has 10 rows: its first 5% holds no row .*validation_file"):
        load_text_dataset(train_file=str(ten))
    assert len(load_text_dataset(train_file=str(ten), validation_split_percentage=20)["validation"]) == 2
    for percent in (100, 150, -5, 0, 2.5):
        with pytest.raises(ValueError, match=f"validation_split_percentage={percent!r}: .* 1..99"):
            load_text_dataset(train_file=str(ten), validation_split_percentage=percent)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 40)
    for name in ("empty.txt", "latin1.txt"):
        with pytest.raises(ValueError, match=f"Cannot read .*{name}.*non-empty UTF-8"):
            load_text_dataset(train_file=str(tmp_path / name))
    with pytest.raises(ValueError, match="absent.txt: no such file"):
        load_text_dataset(train_file=str(tmp_path / "absent.txt"))
    with pytest.raises(ValueError, match="Give dataset_name .* or train_file .*, not both"):  # reached for the Hub
        load_text_dataset(dataset_name="fortunes", train_file=str(ten))
    for size in (0, -1):  # a ZeroDivisionError, and nothing
        with pytest.raises(ValueError, match=f"block_size={size}: tokens per block"):
            group_texts({"input_ids": [[1, 2, 3]]}, size)


TEXTS = [
    "The quick brown fox jumps over the lazy dog.\n\t\t-- Typist",
    "Naïve café — ünïcödé ✓",
    "tab\tand  spaces",
] * 20


def test_tokenizer_round_trips_and_reloads_through_auto_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = train_tokenizer(TEXTS, vocab_size=300, model_max_length=64)
    assert len(tokenizer) <= 300 and tokenizer.pad_token_id != tokenizer.eos_token_id
    for text in TEXTS[:3]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text  # byte-level: no unknown token, exact text back
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(TEXTS[:3])["input_ids"] == tokenizer(TEXTS[:3])["input_ids"]
    assert (reloaded.eos_token, reloaded.pad_token, reloaded.model_max_length) == ("<|endoftext|>", "<|pad|>", 64)


def test_byte_lengths_count_the_utf8_bytes_of_the_text():
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    lengths = token_byte_lengths(tokenizer)
    for text in TEXTS[:3]:
        ids = tokenizer(text)["input_ids"]
        assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
    assert int(lengths[tokenizer.eos_token_id]) == text_data.SPECIAL_TOKEN_BYTES


def test_smallest_vocabulary_is_plain_bytes():
    tokenizer = train_tokenizer(TEXTS, vocab_size=256 + len(text_data.SPECIAL_TOKENS))
    text = TEXTS[1]
    assert len(tokenizer(text)["input_ids"]) == len(text.encode("utf-8"))
    with pytest.raises(ValueError, match="vocab_size >= 258"):
        train_tokenizer(TEXTS, vocab_size=200)


def test_bits_per_byte_and_predicted_bytes():
    assert bits_per_byte(math.log(2) * 10, 5) == pytest.approx(2.0)
    lengths = torch.tensor([1, 2, 3, 4])
    labels = torch.tensor([[0, 1, 2, 3], [3, -100, 1, -100]])  # the first position of each row is never scored
    assert predicted_bytes(labels, lengths) == (2 + 3 + 4) + 2
    with pytest.raises(ValueError, match="positive byte count"):
        bits_per_byte(1.0, 0)


def test_group_texts_cuts_blocks_and_copies_labels():
    grouped = group_texts({"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]]}, block_size=4)
    assert grouped["input_ids"] == [[1, 2, 3, 4], [5, 6, 7, 8]]  # the 9 left over is dropped
    assert grouped["labels"] == grouped["input_ids"] and grouped["labels"] is not grouped["input_ids"]


@needs_fortunes
def test_real_fortunes_corpus_and_categories():
    lm = load_fortunes_lm()
    assert len(lm["train"]) > 10 * len(lm["validation"]) > 0
    assert not set(lm["train"]["text"]) & set(lm["validation"]["text"])
    cls = load_fortunes_classification()
    names = cls["train"].features["label"].names
    assert len(names) >= 10 and {"computers", "people", "zippy"} <= set(names)
    train_shares = np.bincount(cls["train"]["label"]) / len(cls["train"])
    test_shares = np.bincount(cls["test"]["label"], minlength=len(names)) / len(cls["test"])
    np.testing.assert_allclose(train_shares, test_shares, atol=0.01)

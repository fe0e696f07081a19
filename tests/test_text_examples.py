"""examples/train_clm.py and examples/train_text_classification.py end to end with tiny settings: they train through
SALTrainer, report perplexity and bits per byte (or accuracy), and leave folders that `pipeline(...)` and
`AutoTokenizer` load offline. The hub path runs with `datasets.load_dataset` mocked (never downloads)."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from sal_hf import text_data


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = ["--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--num_areas", "2"]
TINY += ["--tokenizer_vocab_size", "300", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8"]
TINY += ["--max_steps", "3", "--logging_steps", "1", "--dataloader_pin_memory", "False"]
needs_fortunes = pytest.mark.skipif(
    not text_data.fortunes_available(),
    reason=f"Debian's fortunes are not installed in {text_data.FORTUNES_DIR} (`{text_data.FORTUNES_INSTALL}`)",
)


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


SENTENCES = [
    "The cat sat on the mat and looked at the moon.",
    "A bore is a man who talks about himself.",
    "Computers are useless; they only give answers.",
    "Never trust a computer you cannot throw out a window.",
]


@pytest.fixture
def text_files(tmp_path):
    lines = [f"{SENTENCES[i % 4]} Line {i}." for i in range(80)]
    (tmp_path / "train.txt").write_text("\n".join(lines[:64]) + "\n", encoding="utf-8")
    (tmp_path / "val.txt").write_text("\n".join(lines[64:]) + "\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("rule", ["sal", "bp"])
def test_train_clm_on_text_files_reports_bits_per_byte_and_generates(text_files, rule):
    from transformers import AutoTokenizer, pipeline

    out = text_files / f"clm-{rule}"
    argv = ["--train_file", str(text_files / "train.txt"), "--validation_file", str(text_files / "val.txt")]
    metrics = load_example("train_clm").main(
        [*argv, *TINY, "--block_size", "16", "--learning_rule", rule, "--output_dir", str(out)]
    )
    assert math.isfinite(metrics["eval_loss"]) and metrics["perplexity"] == pytest.approx(
        math.exp(metrics["eval_loss"])
    )
    # bits/byte = nats / ln 2 / bytes, with the byte count of the scored tokens.
    expected = metrics["eval_loss"] / math.log(2) / metrics["eval_bytes_per_token"]
    assert metrics["eval_bits_per_byte"] == pytest.approx(expected)
    assert 1.0 < metrics["eval_bytes_per_token"] < 8.0

    tokenizer = AutoTokenizer.from_pretrained(out)
    generator = pipeline("text-generation", model=str(out), tokenizer=tokenizer)
    text = generator("The cat", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("The cat") and len(text) > len("The cat")


@pytest.mark.parametrize("short", ["training", "validation"])
def test_train_clm_names_a_text_shorter_than_one_block(text_files, short):
    """A training text shorter than one block reached torch's RandomSampler: 'num_samples should be a positive
    integer value, but got num_samples=0', after the model was built."""
    (text_files / "short.txt").write_text("The cat.\nA dog.\n", encoding="utf-8")
    files = {"training": "train.txt", "validation": "val.txt", short: "short.txt"}
    argv = [
        "--train_file",
        str(text_files / files["training"]),
        "--validation_file",
        str(text_files / files["validation"]),
    ]
    with pytest.raises(ValueError, match=f"The {short} text holds no block of 64 tokens: lower --block_size"):
        load_example("train_clm").main([*argv, *TINY, "--block_size", "64", "--output_dir", str(text_files / "out")])


def test_train_clm_hub_path_calls_load_dataset(tmp_path, monkeypatch):
    """`--dataset_name wikitext --dataset_config_name wikitext-2-raw-v1`, with the loader mocked."""
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None, **kwargs):
        calls.append((name, config, split))
        rows = {"text": [f"{SENTENCES[i % 4]}\n" for i in range(40)]}
        splits = {"train": datasets.Dataset.from_dict(rows), "validation": datasets.Dataset.from_dict(rows)}
        return datasets.DatasetDict(splits)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    argv = ["--dataset_name", "wikitext", "--dataset_config_name", "wikitext-2-raw-v1", "--block_size", "16"]
    metrics = load_example("train_clm").main([*argv, *TINY, "--output_dir", str(tmp_path / "out")])
    assert calls == [("wikitext", "wikitext-2-raw-v1", None)]
    assert math.isfinite(metrics["eval_bits_per_byte"])


def test_text_classification_on_csv_files_then_pipeline(tmp_path):
    from transformers import pipeline

    names = ["cats", "computers"]
    for split, n in (("train", 48), ("val", 16), ("test", 16)):
        rows = [f'"{SENTENCES[0 if i % 2 == 0 else 2]} {i}",{names[i % 2]}' for i in range(n)]
        (tmp_path / f"{split}.csv").write_text("sentence,topic\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "cls"
    argv = [f"--{k}_file" for k in ("train", "validation", "test")]
    files = [str(tmp_path / f"{s}.csv") for s in ("train", "val", "test")]
    argv = [x for pair in zip(argv, files) for x in pair]
    metrics = load_example("train_text_classification").main(
        [*argv, "--text_column_name", "sentence", "--label_column_name", "topic", *TINY, "--output_dir", str(out)]
    )
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and 0.0 <= metrics["test_accuracy"] <= 1.0
    classifier = pipeline("text-classification", model=str(out))
    assert classifier("The cat sat on the mat.")[0]["label"] in names


def test_text_classification_maps_every_split_with_the_training_labels(tmp_path):
    """A validation file holding only the second class numbered it 0 (each split encoded on its own) and scored it
    against the first: a silently wrong eval_accuracy. Flags that cannot work are named before training."""
    example = load_example("train_text_classification")
    (tmp_path / "train.csv").write_text(
        "text,label\n" + "\n".join(f"a {i},{'cats' if i % 2 else 'dogs'}" for i in range(8))
    )
    (tmp_path / "val.csv").write_text("text,label\ndogs only,dogs\n")
    (tmp_path / "bad.csv").write_text("text,label\nnew,birds\n")
    args = example.DataTrainingArguments(
        train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "val.csv")
    )
    raw = example.load_raw(args, seed=0)
    names = raw["train"].features["label"].names
    assert raw["validation"].features["label"].names == names and raw["validation"]["label"] == [names.index("dogs")]
    # Integer labels: the training split's ids follow its names' order ("10" before "2"); a validation 2 was kept
    # as id 2, which named "10".
    (tmp_path / "train_ids.csv").write_text("text,label\n" + "".join(f"class {i % 11},{i % 11}\n" for i in range(33)))
    (tmp_path / "val_ids.csv").write_text("text,label\n" + "".join(f"class {i},{i}\n" for i in range(11)))
    files = dict(train_file=str(tmp_path / "train_ids.csv"), validation_file=str(tmp_path / "val_ids.csv"))
    raw = example.load_raw(example.DataTrainingArguments(**files), seed=0)
    names = raw["train"].features["label"].names
    for split in ("train", "validation"):
        assert all(names[row["label"]] == row["text"].split()[1] for row in raw[split])
    with pytest.raises(ValueError, match=r"labels the training split lacks: \['birds'\]"):
        example.load_raw(
            example.DataTrainingArguments(
                train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "bad.csv")
            ),
            seed=0,
        )
    train = ["--train_file", str(tmp_path / "train.csv"), "--output_dir", str(tmp_path / "out"), *TINY]
    with pytest.raises(ValueError, match="--do_eval needs a validation split"):
        example.main(train)
    with pytest.raises(ValueError, match=r"\['num_aeras'\], which SALTransformerConfig does not have"):
        example.main([*train, "--do_eval", "false", "--config_overrides", "num_aeras=2"])
    with pytest.raises(ValueError, match="a .csv, .json or .jsonl file"):
        example.main(["--train_file", str(tmp_path / "train.txt"), "--output_dir", str(tmp_path / "out")])


@pytest.mark.slow  # tokenizes the whole corpus twice: about a minute on a loaded 2-core machine
@needs_fortunes
def test_examples_default_to_the_offline_fortunes(tmp_path):
    small = ["--max_train_samples", "32", "--max_eval_samples", "8", "--max_steps", "2"]
    metrics = load_example("train_clm").main([*TINY, *small, "--block_size", "16", "--output_dir", str(tmp_path / "a")])
    assert math.isfinite(metrics["eval_bits_per_byte"])
    metrics = load_example("train_text_classification").main(
        [*TINY, *small, "--max_predict_samples", "8", "--output_dir", str(tmp_path / "b")]
    )
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tmp_path / "b")
    assert "computers" in config.id2label.values() and config.num_labels == len(config.id2label) >= 10


@pytest.mark.slow  # 2-4 minutes on a loaded 2-core machine
@needs_fortunes
def test_benchmark_text_quick_runs_and_reports(tmp_path):
    import subprocess

    script = EXAMPLES.parent / "scripts" / "benchmark_text.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--threads", "1"], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "## Targets of the issue" in result.stdout and "sal-4+micro" in result.stdout

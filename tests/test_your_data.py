"""Users' own data: colour images, image folders and dataset names in `sal-hf train`, the docs/YOUR_DATA.md flow,
and errors that say what to do when a batch has no usable labels."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config, training_args
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

from sal_hf import SALConfig, SALForImageClassification, SALImageProcessor, SALTrainer, cli
from sal_hf.data import load_images


DOC = Path(__file__).resolve().parents[1] / "docs" / "YOUR_DATA.md"
# One colour per class, so that a few steps separate them; modes and sizes vary as in a real folder.
CLASSES = {"bird": (40, 200, 60), "cat": (220, 40, 30), "dog": (30, 60, 210)}


def write_image_folder(root: Path, per_class: int = 6, seed: int = 0) -> Path:
    """transformers' imagefolder layout: root/<label>/<n>.png."""
    rng = np.random.default_rng(seed)
    for name, colour in CLASSES.items():
        (root / name).mkdir(parents=True)
        for n in range(per_class):
            height, width = (6, 6) if n == 0 else rng.integers(5, 12, size=2)
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            (image.convert("RGBA") if n % 3 == 1 else image).save(root / name / f"{n}.png")
    return root


def test_the_your_data_doc_trains_and_the_pipeline_names_the_labels(tmp_path, monkeypatch, capsys):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    code = code.replace("num_train_epochs=10", "num_train_epochs=1")  # the flow, not the accuracy
    write_image_folder(tmp_path / "my_images")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    predictions = namespace["classify"](namespace["data"]["test"][0]["image"], top_k=3)
    assert {entry["label"] for entry in predictions} == set(CLASSES)
    assert set(CLASSES) <= set(capsys.readouterr().out.replace("'", " ").split())  # the printed example
    saved = json.loads((tmp_path / "my_model" / "config.json").read_text())
    assert saved["id2label"] == {"0": "bird", "1": "cat", "2": "dog"}
    assert (saved["num_channels"], saved["input_size"]) == (3, 3 * 32 * 32)
    processor = AutoImageProcessor.from_pretrained(tmp_path / "my_model")
    assert processor.do_convert_rgb and not processor.do_convert_grayscale


@pytest.mark.parametrize("channels", [1, 3])
def test_processor_and_model_follow_num_channels(channels, tmp_path):
    config = tiny_config(input_size=channels * 16, image_size=[4, 4], num_channels=channels)
    processor = SALImageProcessor.from_sal_config(config)
    red = Image.new("RGB", (9, 7), (255, 0, 0))
    pixel_values = processor(red, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, channels, 4, 4)
    expected = [0.299] if channels == 1 else [1.0, 0.0, 0.0]  # luma of pure red, or red kept
    torch.testing.assert_close(pixel_values[0, :, 0, 0], torch.tensor(expected), atol=1 / 255, rtol=0)
    gray = processor(Image.new("L", (4, 4), 51), return_tensors="pt")["pixel_values"]  # grayscale input, any mode
    torch.testing.assert_close(gray, torch.full((1, channels, 4, 4), 0.2))
    model = SALForImageClassification(config).eval()
    assert model(pixel_values=pixel_values).logits.shape == (1, config.num_labels)
    processor.save_pretrained(tmp_path)
    again = SALImageProcessor.from_pretrained(tmp_path)
    assert torch.equal(again(red, return_tensors="pt")["pixel_values"], pixel_values)
    # Square images are inferred from input_size / num_channels when image_size is unset.
    unsized = SALImageProcessor.from_sal_config(SALConfig(input_size=channels * 25, num_channels=channels))
    assert (unsized.size.height, unsized.size.width) == (5, 5)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"num_channels": 2, "input_size": 32}, r"1 \(luminance\) or 3 \(RGB\); got num_channels=2"),
        ({"num_channels": 3, "input_size": 16, "image_size": [4, 4]}, "num_channels=3 holds 48 values"),
        ({"num_channels": 1, "input_size": 48, "image_size": [4, 4]}, "num_channels=1 holds 16 values"),
    ],
)
def test_config_rejects_inconsistent_channels(fields, match):
    with pytest.raises(ValueError, match=match):
        SALConfig(num_labels=3, **fields)


def test_configs_saved_before_num_channels_are_grayscale():
    legacy = SALConfig(input_size=16, image_size=[4, 4], num_labels=3).to_dict()
    del legacy["num_channels"]
    config = SALConfig.from_dict(legacy)
    assert config.num_channels == 1 and SALImageProcessor.from_sal_config(config).do_convert_grayscale


TINY_CLI = [
    "--num-areas", "2", "--hidden-sizes", "8", "--max-steps", "2", "--per-device-train-batch-size", "4",
    "--probe-size", "4", "--disable-tqdm", "true", "--report-to", "none", "--logging-steps", "1",
]  # fmt: skip


@pytest.mark.parametrize(
    "how, channels, size",
    [("imagefolder", 1, None), ("path", 3, [4, 4])],
    ids=["imagefolder-gray-first-image-size", "path-rgb-resized"],
)
def test_cli_trains_on_an_image_folder(tmp_path, how, channels, size):
    folder = write_image_folder(tmp_path / "images")
    source = (
        ["--dataset", "imagefolder", "--data-dir", str(folder)] if how == "imagefolder" else ["--dataset", str(folder)]
    )
    extra = ["--num-channels", str(channels)] + (["--image-size", *map(str, size)] if size else [])
    out = tmp_path / "run"
    assert cli.main(["train", *source, *extra, *TINY_CLI, "--output-dir", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    height, width = size or config["image_size"]
    assert config["id2label"] == {"0": "bird", "1": "cat", "2": "dog"}
    assert (config["num_channels"], config["input_size"]) == (channels, channels * height * width)
    model = AutoModelForImageClassification.from_pretrained(out)
    processor = AutoImageProcessor.from_pretrained(out)
    pixel_values = processor(Image.open(folder / "cat" / "2.png"), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, channels, height, width)
    assert model(pixel_values=pixel_values).logits.shape == (1, 3)
    # `sal-hf info` routes the same images (it took built-in sets only).
    assert cli.main(["info", str(out), *source]) == 0


def test_load_images_keeps_the_folder_split_and_matches_the_saved_processor(tmp_path):
    from datasets import load_dataset

    folder = tmp_path / "split"
    write_image_folder(folder / "train", per_class=3)
    write_image_folder(folder / "test", per_class=2, seed=1)
    data = load_images("imagefolder", data_dir=str(folder), image_size=[5, 3], num_channels=3)
    assert (len(data["train"]), len(data["test"])) == (9, 6)
    assert data["train"].features["labels"].names == sorted(CLASSES)
    # What training sees is what the processor saved with the model gives at inference.
    config = SALConfig(input_size=45, image_size=[5, 3], num_channels=3, num_labels=3)
    raw = load_dataset("imagefolder", data_dir=str(folder))["test"]
    expected = SALImageProcessor.from_sal_config(config)(raw[4]["image"], return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(data["test"][4]["pixel_values"], expected)
    assert data["test"][4]["labels"] == raw[4]["label"]


def test_load_images_from_a_dataset_name_encodes_string_labels(monkeypatch):
    import datasets

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)) for _ in range(10)]
    calls = []

    def fake_load_dataset(name, data_dir=None):  # what a Hub dataset with string labels returns, in miniature
        calls.append((name, data_dir))
        features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("string")})
        return datasets.DatasetDict(
            {"train": datasets.Dataset.from_dict({"img": images, "label": ["yes", "no"] * 5}, features=features)}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_images("someone/pictures")
    assert calls == [("someone/pictures", None)]
    assert data["train"].features["labels"].names == ["no", "yes"]
    assert (len(data["train"]), len(data["test"])) == (8, 2)
    assert tuple(data["train"][0]["pixel_values"].shape) == (1, 6, 6)


def test_your_data_errors_say_what_to_do(tmp_path, capsys):
    for label in ("a", "b"):
        (tmp_path / "big" / label).mkdir(parents=True)
        for n in range(2):
            Image.new("RGB", (200, 100)).save(tmp_path / "big" / label / f"{n}.png")
    with pytest.raises(ValueError, match="two or more class subfolders"):
        load_images(str(tmp_path / "big" / "a"))
    with pytest.raises(ValueError, match=r"100x200 .*--image-size H W"):
        load_images(str(tmp_path / "big"), num_channels=3)
    with pytest.raises(ValueError, match="needs data_dir"):
        load_images("imagefolder")
    with pytest.raises(ValueError, match="'nope' is not a built-in set"):
        load_images("nope")
    assert cli.main(["train", "--dataset", "digits", "--num-channels", "3", "--output-dir", str(tmp_path / "x")]) == 2
    assert "--num-channels applies to your own images" in capsys.readouterr().err


def labelled_rows(labels) -> list[dict]:
    return [{"pixel_values": torch.rand(16), "labels": label} for label in labels]


@pytest.mark.parametrize("rule", ["sal", "bp"])
@pytest.mark.parametrize(
    "rows",
    [
        pytest.param(labelled_rows(["cat", "dog"] * 4), id="string-labels-dropped-by-the-collator"),
        pytest.param([{"pixel_values": torch.rand(16), "class": 1} for _ in range(8)], id="other-column-name"),
    ],
)
def test_a_batch_without_labels_says_what_to_do(tmp_path, rule, rows):
    model = SALForImageClassification(tiny_config(learning_rule=rule))
    trainer = SALTrainer(model=model, args=training_args(tmp_path, max_steps=1), train_dataset=rows)
    with pytest.raises(ValueError, match=r"has only \['pixel_values'\].*class_encode_column.*`label` or `labels`"):
        trainer.train()


def test_string_labels_from_a_collator_are_refused_with_the_fix(tmp_path):
    def collate(rows):
        return {
            "pixel_values": torch.stack([row["pixel_values"] for row in rows]),
            "labels": [r["labels"] for r in rows],
        }

    trainer = SALTrainer(
        model=SALForImageClassification(tiny_config()),
        args=training_args(tmp_path, max_steps=1),
        train_dataset=labelled_rows(["cat", "dog"] * 4),
        data_collator=collate,
    )
    with pytest.raises(ValueError, match=r"tensor of integer class ids; got a list: \['cat'.*config.label2id"):
        trainer.train()

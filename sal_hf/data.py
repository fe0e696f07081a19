"""Image-classification datasets as `datasets.DatasetDict`, offline first.

Every loader returns a `DatasetDict` with splits `train` and `test`, a float32 `pixel_values` column
(H x W values in [0, 1], grayscale) and a `ClassLabel` column `labels`, formatted for torch. `datasets` is
imported lazily so that `import sal_hf` stays fast.

Offline sources (what CI and every machine here use) are data that a package ships. A dataset that cannot be
had offline raises an error that says so; it is never replaced by another under its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np


if TYPE_CHECKING:
    from datasets import DatasetDict


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


def load_digits(seed: int = 0, test_size: float = 0.2) -> DatasetDict:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), stratified train/test split."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = digits.images.astype(np.float32) / 16.0  # (N, 8, 8), 0..16 -> [0, 1]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=test_size, stratify=digits.target, random_state=seed
    )
    return _to_dataset_dict(
        {"train": (x_train, y_train), "test": (x_test, y_test)},
        [str(i) for i in range(10)],
        f"scikit-learn digits, stratified {1 - test_size:.0%}/{test_size:.0%} split, seed {seed}",
    )


LOADERS: dict[str, Callable[..., DatasetDict]] = {"digits": load_digits}


def load_image_dataset(name: str, **kwargs) -> DatasetDict:
    """Load a dataset by name (see `LOADERS`) as a `DatasetDict` with `train` and `test` splits."""
    if name not in LOADERS:
        raise ValueError(f"Unknown dataset {name!r}; available: {sorted(LOADERS)}.")
    return LOADERS[name](**kwargs)


__all__ = ["LOADERS", "load_digits", "load_image_dataset"]

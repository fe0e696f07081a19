"""SALImageProcessor: turns images into the [0, 1] `pixel_values` (grayscale, or RGB with `num_channels=3`) that
SAL models are trained on.

Self-contained (imports transformers and numpy only), so that `save_pretrained` can ship it as remote code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers.image_processing_backends import PilBackend
from transformers.processing_utils import ImagesKwargs
from transformers.utils import logging


logger = logging.get_logger(__name__)


# ITU-R 601-2 luma, the weights of PIL's `Image.convert("L")`.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
BILINEAR = 2  # PIL.Image.Resampling.BILINEAR, without importing PIL at import time
# PIL modes whose array transformers reads as gray or RGB(A) values as they are; every other mode (palette indices,
# 1-bit, an alpha channel beside one gray channel, CMYK, YCbCr, HSV, 16-bit or float gray, ...) is converted by
# PIL first: to "L" for grayscale, else to INDIRECT_MODES' mode (RGB by default).
DIRECT_MODES = ("L", "RGB", "RGBA")
INDIRECT_MODES = {"1": "L", "P": "RGB", "PA": "RGBA", "LA": "L", "RGBa": "RGBA"}


CHANNEL_COUNTS = (1, 3, 4)  # what transformers reads as a channel axis (gray, RGB, RGBA)


def _is_array(image: Any) -> bool:
    return isinstance(image, np.ndarray) or hasattr(image, "unsqueeze")  # numpy or torch


def _with_channel_axis(image: Any) -> Any:
    """(H, W) array or tensor -> (1, H, W); anything else unchanged."""
    return image[None] if _is_array(image) and image.ndim == 2 else image


class SALImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_convert_grayscale (`bool`, *optional*, defaults to `True`):
        Turn colour images into one luminance channel (ITU-R 601-2 luma, as PIL's `convert("L")`); an alpha
        channel is dropped.
    """

    do_convert_grayscale: bool


class SALImageProcessor(PilBackend):
    r"""Image processor of SAL image classifiers: grayscale (or RGB), resize to the model's `image_size`, rescale
    to [0, 1] (what `sal_hf.data` gives during training); optional normalisation. Returns `pixel_values` of shape
    `(batch_size, channels, height, width)`, which the model flattens to `input_size = channels * height * width`.

    Args:
        do_convert_grayscale (`bool`, *optional*, defaults to `True`): see [`SALImageProcessorKwargs`]; 1 channel.
        do_convert_rgb (`bool`, *optional*, defaults to `False`): turn every image into 3 RGB channels with
            transformers' conversion (grayscale repeated, transparency composited on white); with
            `do_convert_grayscale=False`, for models with `num_channels=3`.
        do_resize (`bool`, *optional*, defaults to `True`): resize to `size`.
        size (`dict[str, int]`, *optional*, defaults to `{"height": 28, "width": 28}`): the model's image size.
            [`~SALImageProcessor.from_sal_config`] takes it from a [`SALConfig`].
        do_rescale (`bool`, *optional*, defaults to `True`): multiply by `rescale_factor` (1/255: 8-bit -> [0, 1]).
        do_normalize (`bool`, *optional*, defaults to `False`): subtract `image_mean` and divide by `image_std`.
            Off by default because the project's datasets train on [0, 1] values.

    Example:

    ```python
    >>> from PIL import Image
    >>> from sal_hf import SALConfig, SALImageProcessor
    >>> processor = SALImageProcessor.from_sal_config(SALConfig(input_size=64, image_size=[8, 8], num_labels=10))
    >>> processor(Image.new("RGB", (32, 32)), return_tensors="pt")["pixel_values"].shape
    torch.Size([1, 1, 8, 8])
    ```
    """

    valid_kwargs = SALImageProcessorKwargs
    model_input_names = ["pixel_values"]
    resample = BILINEAR
    size = {"height": 28, "width": 28}
    do_resize = True
    do_rescale = True
    do_normalize = False
    do_convert_rgb = False
    do_convert_grayscale = True

    @classmethod
    def from_sal_config(cls, config: Any, **kwargs: Any) -> SALImageProcessor:
        """A processor for a model built from `config` (a [`SALConfig`]): resizes to `config.image_size`, or to
        a square of `input_size / num_channels` values when `image_size` is unset and that is a perfect square;
        luminance for `num_channels=1`, RGB for `num_channels=3`."""
        channels = getattr(config, "num_channels", 1)  # configs saved before the field existed are grayscale
        image_size = getattr(config, "image_size", None)
        if image_size is None:
            side = int(round((config.input_size / channels) ** 0.5))
            if channels * side * side != config.input_size:
                raise ValueError(
                    f"Cannot infer the image size from input_size={config.input_size} with num_channels={channels} "
                    "(not num_channels times a perfect square). Set SALConfig.image_size=[height, width] or pass "
                    "size={'height': ..., 'width': ...}."
                )
            image_size = [side, side]
        height, width = image_size
        defaults = {
            "size": {"height": height, "width": width},
            "do_convert_grayscale": channels == 1,
            "do_convert_rgb": channels == 3,
        }
        return cls(**{**defaults, **kwargs})

    def preprocess(self, images: Any, *args: Any, **kwargs: Any):
        """Like [`~BaseImageProcessor.preprocess`], and also accepts 2-D (height, width) grayscale arrays or
        tensors, alone, in a list, or stacked as one (N, H, W) array (transformers expects a channel axis; an N of 3
        or 4 reads as one image's channels, with a warning: pass a list there). Values already in [0, 1], such as
        `sal_hf.data`'s, need `do_rescale=False`."""
        if _is_array(images) and images.ndim == 3 and images.shape[-1] not in CHANNEL_COUNTS:
            # (N, H, W): a batch of 2-D images, as `sal_hf.data` batches them, unless N could be a channel axis.
            if images.shape[0] not in CHANNEL_COUNTS:
                images = list(images)
            elif images.shape[0] != 1:
                logger.warning(
                    f"An array of shape {tuple(images.shape)} is read as ONE image of {images.shape[0]} channels "
                    f"(channels first). For {images.shape[0]} grayscale images pass a list of 2-D arrays."
                )
        if isinstance(images, (list, tuple)):
            images = [_with_channel_axis(image) for image in images]
        else:
            images = _with_channel_axis(images)
        return super().preprocess(images, *args, **kwargs)

    def process_image(self, image: Any, *args: Any, do_convert_grayscale: bool | None = None, **kwargs: Any):
        """One raw image -> channels-first array; with `do_convert_grayscale`, colour images become one luminance
        channel (1, H, W); with `do_convert_rgb` (applied by the base class), every image has 3 channels. PIL images
        of palette, 1-bit or gray + alpha mode are converted by PIL first (their arrays hold palette indices, 0/1, or
        two channels), to "L" with `do_convert_grayscale`."""
        mode = getattr(image, "mode", None)
        if isinstance(mode, str) and mode not in DIRECT_MODES:  # a PIL image (a tensor's `mode` is a method)
            image = image.convert("L" if do_convert_grayscale else INDIRECT_MODES.get(mode, "RGB"))
        image = super().process_image(image, *args, **kwargs)  # (C, H, W)
        if do_convert_grayscale and image.shape[0] in (3, 4):
            dtype = image.dtype
            gray = np.tensordot(LUMA_WEIGHTS, image[:3].astype(np.float64), axes=1)[None]  # (1, H, W)
            image = np.round(gray).astype(dtype) if np.issubdtype(dtype, np.integer) else gray.astype(dtype)
        return image


__all__ = ["SALImageProcessor"]

"""An image to predict on, from a file, a PIL image or an array, as RGB pixels."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor

ImageLike = Union[str, Path, Tensor, Any]  # Any: a PIL image or a numpy array


def _from_pil(image: Any) -> Tensor:
    """A PIL image of any mode as ``(H, W, 3)`` uint8 RGB."""
    rgb = image.convert("RGB")
    pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return pixels.view(rgb.height, rgb.width, 3)


def read_rgb(image: ImageLike) -> Tensor:
    """``image`` as ``(3, H, W)`` uint8 RGB pixels.

    Args:
        image: a file path (read with Pillow), a PIL image (any mode: converted to
            RGB), or a ``uint8`` numpy array / tensor of shape ``(H, W, 3)`` (RGB),
            ``(H, W, 4)`` (RGBA: alpha dropped) or ``(H, W)`` (grey).

    Raises:
        ValueError: for an array of another dtype or shape.
        TypeError: for anything else.
        ImportError: for a path when Pillow is not installed.
    """
    if isinstance(image, (str, Path)):
        try:
            from PIL import Image
        except ImportError as error:
            raise ImportError("reading image files needs Pillow: pip install pillow") from error
        with Image.open(image) as opened:
            pixels = _from_pil(opened)
    elif (pil := sys.modules.get("PIL.Image")) is not None and isinstance(image, pil.Image):
        pixels = _from_pil(image)  # a PIL image means PIL is imported: no import needed
    else:
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(image, numpy.ndarray):
            if not image.flags.writeable:  # np.asarray(pil_image): torch warns on read-only
                image = image.copy()
            image = torch.from_numpy(numpy.ascontiguousarray(image))
        if not isinstance(image, Tensor):
            raise TypeError(
                f"expected an image file path, a PIL image or a uint8 (H, W, 3) array, "
                f"got {type(image).__name__}"
            )
        pixels = image
        if (
            pixels.dtype != torch.uint8
            or pixels.ndim not in (2, 3)
            or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4))
        ):
            raise ValueError(
                "expected a uint8 image array of shape (H, W, 3) RGB, (H, W, 4) RGBA or "
                f"(H, W) grey, got dtype {pixels.dtype} and shape {tuple(pixels.shape)}"
            )
        if pixels.ndim == 2:
            pixels = pixels.unsqueeze(-1).expand(-1, -1, 3)  # grey -> three equal channels
        pixels = pixels[..., :3]
    return pixels.permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)

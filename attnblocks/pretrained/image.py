"""An image to predict on, from a file, a PIL image or an array, as mmseg reads it: RGB pixels.

mmsegmentation's test pipeline reads a file with OpenCV (``LoadImageFromFile``:
``mmcv.imfrombytes(..., flag="color")``, i.e. ``cv2.IMREAD_COLOR``), which turns the
picture by its EXIF orientation and always gives 8-bit, 3-channel pixels; the data
preprocessor then swaps OpenCV's BGR to RGB. :func:`read_rgb` gives the same pixels
with Pillow (tested against OpenCV): the EXIF orientation applied, grey and palette
images expanded to three channels, alpha dropped (not blended), 16-bit images reduced
to their high byte. Modes OpenCV converts by rules of its own (CMYK, 32-bit integer or
float pixels) are refused with a ``ValueError`` rather than read differently.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor

ImageLike = Union[str, Path, Tensor, Any]  # Any: a PIL image or a numpy array

# Pillow modes whose conversion to RGB gives OpenCV's IMREAD_COLOR pixels: grey repeated in
# the three channels, palette colours looked up, alpha (and RGBX's padding) dropped.
_CONVERTIBLE_MODES = ("RGB", "L", "1", "P", "PA", "LA", "La", "RGBA", "RGBa", "RGBX")
# 16-bit grey: OpenCV keeps the high byte of each value (libpng's strip_16), grey repeated.
_SIXTEEN_BIT_MODES = {"I;16": "little", "I;16L": "little", "I;16N": sys.byteorder,
                      "I;16B": "big"}  # fmt: skip


def _grey_to_rgb(grey: Tensor) -> Tensor:
    """``(H, W)`` uint8 grey as ``(H, W, 3)``, the value in every channel."""
    return grey.unsqueeze(-1).expand(-1, -1, 3)


def _high_bytes(image: Any) -> Tensor:
    """A 16-bit grey PIL image (or a 32-bit one holding 16-bit values) as ``(H, W, 3)`` uint8."""
    height, width = image.height, image.width
    raw = bytearray(image.tobytes())
    if image.mode == "I":  # 32-bit signed, native order: older Pillow opens 16-bit PNGs so
        values = torch.frombuffer(raw, dtype=torch.int32).view(height, width)
        low, high = image.getextrema()
        if low < 0 or high > 65535:
            raise ValueError(
                f"cannot read a 32-bit integer image (values {low}..{high}) as mmseg does; "
                "expected 8- or 16-bit pixels: convert it to 8-bit RGB first"
            )
        return _grey_to_rgb((values >> 8).to(torch.uint8))
    pairs = torch.frombuffer(raw, dtype=torch.uint8).view(height, width, 2)
    high_byte = 1 if _SIXTEEN_BIT_MODES[image.mode] == "little" else 0
    return _grey_to_rgb(pairs[..., high_byte])


def _from_pil(image: Any) -> Tensor:
    """A PIL image as ``(H, W, 3)`` uint8 RGB, turned by its EXIF orientation as OpenCV does."""
    from PIL import ImageOps  # a PIL image means Pillow is installed

    image = ImageOps.exif_transpose(image)  # a copy turned upright; its orientation tag removed
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        return _high_bytes(image)
    if image.mode not in _CONVERTIBLE_MODES:
        raise ValueError(
            f"cannot read a {image.mode!r} image as mmseg (OpenCV) does; expected RGB, grey, "
            f"palette, alpha or 16-bit grey pixels ({', '.join(_CONVERTIBLE_MODES)}, I;16): "
            "convert it to RGB first"
        )
    rgb = image.convert("RGB")
    pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return pixels.view(rgb.height, rgb.width, 3)


def read_rgb(image: ImageLike) -> Tensor:
    """``image`` as ``(3, H, W)`` uint8 RGB pixels, read as mmseg's test pipeline reads files.

    A file or a PIL image is turned upright by its EXIF orientation tag (a phone photo
    in portrait comes out in portrait, as OpenCV decodes it); grey, bilevel and palette
    images become three channels, alpha is dropped (not blended with a background),
    and 16-bit grey keeps each value's high byte, all as OpenCV's ``IMREAD_COLOR``
    does. Arrays and tensors are taken as they are (no EXIF to apply).

    Args:
        image: a file path (read with Pillow), a PIL image, or a ``uint8`` numpy array /
            tensor of shape ``(H, W, 3)`` (RGB), ``(H, W, 4)`` (RGBA: alpha dropped) or
            ``(H, W)`` (grey).

    Raises:
        ValueError: for an array of another dtype or shape, or an image mode that
            OpenCV converts by rules of its own (CMYK, 32-bit integer or float pixels).
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
            pixels = _grey_to_rgb(pixels)
        pixels = pixels[..., :3]
    return pixels.permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)

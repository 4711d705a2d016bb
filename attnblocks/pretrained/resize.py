"""mmseg's test resize of uint8 images: mmcv's output sizes and OpenCV's bilinear arithmetic.

mmseg resizes a test image before normalising it, on its uint8 pixels, with
``mmcv.imrescale`` (``Resize(scale, keep_ratio=True)``), which calls
``cv2.resize(..., interpolation=cv2.INTER_LINEAR)``. Models trained on such images
can be sensitive to a change of one grey level, so :func:`resize_uint8` repeats
OpenCV's arithmetic in PyTorch instead of interpolating floats: source positions at
half-pixel centres, per-axis weights rounded to 11-bit fixed point, an exact integer
horizontal pass, then the vertical pass in 16-bit steps with its truncations and a
final rounding to uint8 (equal to ``cv2.resize`` value for value, tested). OpenCV
itself is not needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# OpenCV's fixed point for INTER_LINEAR weights: 11 fractional bits (INTER_RESIZE_COEF_BITS)
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def scale_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """``(height, width)`` times ``factor``, each rounded half up as mmcv's ``_scale_size``.

    Args:
        height: the image height.
        width: the image width.
        factor: the scale factor.
    """
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


def rescale_size(height: int, width: int, scale: float | Sequence[int]) -> tuple[int, int]:
    """The size mmcv's ``imrescale`` (keep the aspect ratio) gives an ``height x width`` image.

    Args:
        height: the image height.
        width: the image width.
        scale: a factor, or edge bounds (in either order): the image is scaled by the
            largest factor that fits its long edge within the larger bound and its short
            edge within the smaller one (it may grow).

    Returns:
        ``(new_height, new_width)``, rounded as mmcv rounds them.
    """
    if isinstance(scale, (int, float)):
        if scale <= 0:
            raise ValueError(f"the scale factor must be positive, got {scale}")
        factor = float(scale)
    else:
        long_edge, short_edge = max(scale), min(scale)
        factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return scale_size(height, width, factor)


def _taps(source: int, target: int) -> tuple[Tensor, Tensor]:
    """OpenCV's first source index and fractional offset (float32) per target pixel of an axis."""
    scale = 1.0 / (target / source)  # cv::resize takes inv_scale = target / source, then inverts
    # (d + 0.5) * scale - 0.5 in double precision, stored as float, as OpenCV computes it
    positions = ((torch.arange(target, dtype=torch.float64) + 0.5) * scale - 0.5).float()
    start = positions.floor()
    return start.long(), positions - start


def _weights(fraction: Tensor) -> tuple[Tensor, Tensor]:
    """The two fixed-point weights of each tap, each rounded on its own (half to even)."""
    first = ((1.0 - fraction) * _COEF_SCALE).round().int()  # float32 math as OpenCV's
    second = (fraction * _COEF_SCALE).round().int()
    return first, second


def resize_uint8(pixels: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize uint8 images exactly as ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)``.

    Args:
        pixels: ``(..., C, H, W)`` uint8 images (any number of channels).
        size: the output ``(height, width)``.

    Returns:
        ``(..., C, height, width)`` uint8 images on ``pixels``' device.

    Raises:
        ValueError: for a tensor that is not uint8 with at least 2 dimensions, or a size
            that is not two positive ints.
    """
    if pixels.dtype != torch.uint8 or pixels.ndim < 2 or 0 in pixels.shape[-2:]:
        raise ValueError(
            f"expected non-empty uint8 images (..., H, W), got dtype {pixels.dtype} and "
            f"shape {tuple(pixels.shape)}"
        )
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"size must be a (height, width) pair of positive ints, got {size!r}")
    source_h, source_w = pixels.shape[-2:]
    target_h, target_w = size
    if (source_h, source_w) == (target_h, target_w):
        return pixels.clone()  # OpenCV copies an image of the same size
    if source_h == 2 * target_h and source_w == 2 * target_w:
        # exactly half: OpenCV switches to its area average of each 2 x 2 block, rounded
        x = pixels.int()
        total = x[..., ::2, ::2] + x[..., ::2, 1::2] + x[..., 1::2, ::2] + x[..., 1::2, 1::2]
        return ((total + 2) >> 2).to(torch.uint8)
    device = pixels.device
    # Horizontal pass, exact in integers. A tap left of the image or on/after its last
    # column reads that edge column with the whole weight (OpenCV resets its offset to 0).
    column, fraction = _taps(source_w, target_w)
    outside = (column < 0) | (column >= source_w - 1)
    fraction = torch.where(outside, 0.0, fraction)
    column = column.clamp(0, source_w - 1)
    left, right = (w.to(device) for w in _weights(fraction))
    x = pixels.int()
    following = (column + 1).clamp(max=source_w - 1)
    rows = x[..., column.to(device)] * left + x[..., following.to(device)] * right
    # Vertical pass: rows clamped to the image, weights kept as computed. OpenCV's vector
    # code: values >> 4 to 16 bits, times the weight keeping the high 16 bits, added,
    # then rounded by 2 more bits (22 in all) and saturated to 0..255.
    row, fraction = _taps(source_h, target_h)
    top, bottom = (w.to(device).view(-1, 1) for w in _weights(fraction))
    upper = rows[..., row.clamp(0, source_h - 1).to(device), :] >> 4
    lower = rows[..., (row + 1).clamp(0, source_h - 1).to(device), :] >> 4
    summed = ((upper * top) >> 16) + ((lower * bottom) >> 16)
    return ((summed + 2) >> 2).clamp(0, 255).to(torch.uint8)

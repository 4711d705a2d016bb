"""PSAMask: PSANet's per-pixel masks placed on the feature map, in plain PyTorch.

Zhao et al., "PSANet: Point-wise Spatial Attention Network for Scene Parsing", ECCV 2018,
https://hszhao.github.io/papers/eccv18_psanet.pdf

Every pixel ``(h, w)`` of an ``H x W`` map predicts an ``h_m x w_m`` mask (its
``h_m * w_m`` channels) centred on itself: mask cell ``(i, j)`` belongs to the map
position ``(i + h - (h_m - 1) // 2, j + w - (w_m - 1) // 2)``. :func:`psa_mask` moves
each pixel's mask onto the map, cropping what falls outside it and writing zeros where
the mask does not reach, so that every pixel gets one weight per map position:

- ``"collect"``: ``out[b, p, h, w]`` is pixel ``(h, w)``'s weight of position ``p``
  (``p = row * W + col``): what ``(h, w)`` gathers from ``p``;
- ``"distribute"``: ``out[b, p, h, w]`` is pixel ``p``'s weight of position ``(h, w)``:
  the same values with the two position axes swapped.

This is mmcv's compiled ``PSAMask`` op (``mmcv/ops/csrc/pytorch/cpu/psamask.cpp``, from
the PSANet authors' ``lib/psa``) written as one indexing operation: no loop over pixels,
no extension to compile, gradients by autograd (the op is a copy, so its backward is the
copy back, as mmcv's). It runs on any device and dtype and under ``torch.compile``,
``torch.export`` and ONNX export.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .._validation import check_choice, check_float_tensor

PSAType = Literal["collect", "distribute"]
#: The two directions of :func:`psa_mask`.
PSA_TYPES: tuple[str, ...] = ("collect", "distribute")


def check_mask_size(mask_size: object) -> tuple[int, int]:
    """``mask_size`` as ``(h_m, w_m)``: an int or a pair of positive ints, else a ValueError.

    Args:
        mask_size: what the caller passed.
    """
    pair = (mask_size, mask_size) if isinstance(mask_size, int) else mask_size
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair)
    ):
        raise ValueError(f"mask_size must be a positive int or a pair of them, got {mask_size!r}")
    return int(pair[0]), int(pair[1])


def _mask_index(size: int, half: int, mask: int, device: torch.device) -> Tensor:
    """``index[p, h]``: the mask cell of pixel ``h`` that covers position ``p`` along one axis.

    ``p - h + half``, or ``mask`` (the zero cell padded after the last) where that lies
    outside ``[0, mask)``: position ``p`` is outside pixel ``h``'s mask.
    """
    steps = torch.arange(size, device=device)
    index = steps[:, None] - steps[None, :] + half  # (positions, pixels)
    return torch.where((index >= 0) & (index < mask), index, torch.full_like(index, mask))


def psa_mask(x: Tensor, psa_type: PSAType, mask_size: int | tuple[int, int]) -> Tensor:
    """Place every pixel's ``h_m x w_m`` mask on the map (mmcv's ``PSAMask``).

    Args:
        x: ``(B, h_m * w_m, H, W)`` masks, channel ``i * w_m + j`` being mask cell
            ``(i, j)``; the mask's centre cell ``((h_m - 1) // 2, (w_m - 1) // 2)`` sits on
            the pixel itself (even sizes put it left of / above the middle, as mmcv does).
        psa_type: ``"collect"`` or ``"distribute"`` (see the module docstring).
        mask_size: ``(h_m, w_m)``, or one int for a square mask; any size, smaller or
            larger than the map.

    Returns:
        ``(B, H * W, H, W)`` in ``x``'s dtype: for ``"collect"`` ``out[:, p, h, w]`` is the
        mask of pixel ``(h, w)`` at position ``p``; ``"distribute"`` swaps ``p`` and
        ``(h, w)``. Positions outside a pixel's mask are 0.

    Raises:
        ValueError: for an unknown ``psa_type``, a bad ``mask_size``, or ``x`` that is not
            a 4D floating-point tensor with ``h_m * w_m`` channels.
    """
    check_choice("psa_type", psa_type, PSA_TYPES)
    mask_height, mask_width = check_mask_size(mask_size)
    check_float_tensor("psa_mask input", x, ("B", "C", "H", "W"))
    if x.shape[1] != mask_height * mask_width:
        raise ValueError(
            f"psa_mask with mask_size ({mask_height}, {mask_width}) expects "
            f"{mask_height} * {mask_width} = {mask_height * mask_width} channels, got "
            f"{x.shape[1]} (shape {tuple(x.shape)})"
        )
    height, width = x.shape[-2:]
    masks = rearrange(x, "b (i j) h w -> b i j h w", i=mask_height, j=mask_width)
    masks = F.pad(masks, (0, 0, 0, 0, 0, 1, 0, 1))  # a zero cell after each mask axis's last
    rows = _mask_index(height, (mask_height - 1) // 2, mask_height, x.device)  # (H pos, H pix)
    cols = _mask_index(width, (mask_width - 1) // 2, mask_width, x.device)  # (W pos, W pix)
    pixel_rows = torch.arange(height, device=x.device)
    pixel_cols = torch.arange(width, device=x.device)
    # One gather with broadcast index tensors: out[b, a, c, d, e] = masks[b, i, j, h, w].
    if psa_type == "collect":  # axes (position row, position col, pixel row, pixel col)
        index = (
            rows[:, None, :, None], cols[None, :, None, :],
            pixel_rows[None, None, :, None], pixel_cols[None, None, None, :],
        )  # fmt: skip
    else:  # axes (pixel row, pixel col, position row, position col)
        index = (
            rows.T[:, None, :, None], cols.T[None, :, None, :],
            pixel_rows[:, None, None, None], pixel_cols[None, :, None, None],
        )  # fmt: skip
    out = masks[(slice(None), *index)]  # (B, H, W, H, W)
    return rearrange(out, "b r c h w -> b (r c) h w")

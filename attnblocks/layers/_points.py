"""Query pixels chosen for ``attention_map``: checked once for every block that draws maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_points(
    points: Sequence[tuple[int, int]] | Tensor, height: int, width: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """The rows and columns of ``points``, or a ValueError naming what is wrong.

    Args:
        points: ``P`` pixels as ``(row, col)`` pairs, a sequence or a ``(P, 2)`` integer tensor.
        height: the map's height ``H``.
        width: the map's width ``W``.
        device: where the returned index tensors live.

    Returns:
        ``rows`` and ``cols``, two ``(P,)`` integer tensors.
    """
    rows_cols = torch.as_tensor(points, device=device)
    if rows_cols.ndim != 2 or rows_cols.shape[-1] != 2 or rows_cols.is_floating_point():
        raise ValueError(f"points must be (row, col) integer pairs of shape (P, 2), got {points!r}")
    rows, cols = rows_cols.unbind(-1)
    outside = (rows < 0) | (rows >= height) | (cols < 0) | (cols >= width)
    if outside.any():
        bad = rows_cols[outside].tolist()
        raise ValueError(f"points {bad} lie outside the {height} x {width} feature map")
    return rows, cols

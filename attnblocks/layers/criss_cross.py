"""CrissCrossAttention: CCNet's criss-cross attention block.

Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019,
https://arxiv.org/abs/1811.11721
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._validation import check_feature_map, check_positive_int, check_reduced_channels
from ..functional._precision import attention_dtype
from ..functional.criss_cross import criss_cross_attention, criss_cross_attention_weights
from ._points import check_points
from ._projection import project_in, query_key_value_convs


class CrissCrossAttention(nn.Module):
    """Criss-cross attention: each pixel becomes a weighted sum of its row and its column.

    ``out = gamma * attended + x`` where ``attended[:, :, h, w]`` sums the values of the
    ``H + W - 1`` pixels of row ``h`` and column ``w`` (the pixel itself once), weighted
    by one softmax of the unscaled energies ``q(h, w) . k(p)``; ``q``, ``k`` and ``v``
    are 1x1 convolutions of ``x``. This is the block of the official CCNet and of mmcv's
    ``CrissCrossAttention`` (same state-dict keys; mmcv stores ``gamma`` as a 0-d
    ``gamma.scale``). ``gamma`` starts at ``gamma_init`` (0: the block starts as the
    identity).

    CCNet's recurrent criss-cross attention (RCCA) applies the same block twice, so
    that information reaches every pixel: ``recurrence=2`` does that in one module
    (shared weights, as CCNet's head).

    Memory grows with ``N (H + W)``, ``N = H * W``, in forward and backward, never with
    ``N^2`` (see :func:`attnblocks.functional.criss_cross_attention`). Query and key
    projections, energies and softmax run in at least float32, also for half inputs
    and under ``torch.autocast``; the value path keeps the input's (or autocast's) dtype.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)`` for any ``B, H, W``.

    Args:
        channels: input and output channels ``C``.
        reduction: query/key channels are ``channels // reduction`` (8 in CCNet).
        gamma_init: initial value of the learnable residual scale ``gamma``.
        recurrence: how many times the block is applied (CCNet's RCCA: 2).
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 8,
        gamma_init: float = 0.0,
        recurrence: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.key_channels = check_reduced_channels(channels, reduction)
        self.channels = channels
        self.recurrence = check_positive_int("recurrence", recurrence)
        self.query_conv, self.key_conv, self.value_conv = query_key_value_convs(
            channels, self.key_channels, **dd
        )
        self.gamma = nn.Parameter(torch.full((1,), float(gamma_init), **dd))

    def _query_key(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Query and key maps ``(B, C // reduction, H, W)`` in at least float32."""
        dtype = attention_dtype(x.dtype)
        return project_in(self.query_conv, x, dtype), project_in(self.key_conv, x, dtype)

    def _attend_once(self, x: Tensor) -> Tensor:
        query, key = self._query_key(x)
        # gamma and the residual go into the attention function: it then keeps no attended map.
        return criss_cross_attention(
            query, key, self.value_conv(x), gamma=self.gamma.to(x.dtype), residual=x
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply criss-cross attention ``recurrence`` times to ``x`` of shape ``(B, C, H, W)``."""
        check_feature_map(x, self.channels, type(self).__name__)
        for _ in range(self.recurrence):
            x = self._attend_once(x)
        return x

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> Tensor:
        """Every pixel's weights over its column and row, for one application of the block.

        Args:
            x: ``(B, C, H, W)`` input feature map.

        Returns:
            ``(B, H, W, H + W)`` as :func:`attnblocks.functional.criss_cross_attention_weights`:
            the ``H`` column weights (the pixel's own entry 0), then the ``W`` row weights.
        """
        check_feature_map(x, self.channels, type(self).__name__)
        return criss_cross_attention_weights(*self._query_key(x))

    @torch.no_grad()
    def attention_map(self, x: Tensor, points: Sequence[tuple[int, int]] | Tensor) -> Tensor:
        """The attention of selected query pixels over the map, for visualisation.

        Weights of one application of the block (the first of ``recurrence``): nonzero
        only on the row and column through each query pixel.

        Args:
            x: ``(B, C, H, W)`` input feature map.
            points: ``P`` query pixels as ``(row, col)`` pairs, a sequence or a
                ``(P, 2)`` integer tensor.

        Returns:
            ``(B, P, H, W)`` maps, ``out[b, p]`` the weights query pixel ``points[p]``
            gives every position (each map sums to 1), in at least float32.
        """
        check_feature_map(x, self.channels, type(self).__name__)
        batch, _, height, width = x.shape
        rows, cols = check_points(points, height, width, x.device)
        query, key = self._query_key(x)
        chosen = query[:, :, rows, cols]  # (B, D, P)
        column = torch.einsum("bdp,bdhp->bph", chosen, key[:, :, :, cols])  # (B, P, H)
        row = torch.einsum("bdp,bdpw->bpw", chosen, key[:, :, rows, :])  # (B, P, W)
        column[:, torch.arange(len(rows)), rows] = float("-inf")  # the pixel counts in its row
        weights = torch.cat([column, row], dim=-1).softmax(dim=-1)  # (B, P, H + W)
        maps = weights.new_zeros(batch, len(rows), height, width)
        for index, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())):
            maps[:, index, :, c] = weights[:, index, :height]
            maps[:, index, r, :] += weights[:, index, height:]  # own entry: 0 + its row weight
        return maps

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, key_channels={self.key_channels}, "
            f"recurrence={self.recurrence}"
        )

"""PAM: DANet's position attention module.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .._validation import check_feature_map, check_positive_int, check_reduced_channels
from ..functional._backends import (
    POSITION_BACKENDS,
    PositionBackend,
    check_backend,
    check_chunk_size,
)
from ..functional._precision import attention_dtype
from ..functional.position import position_attention, position_attention_weights
from ._points import check_points
from ._projection import project_in, query_key_value_convs


def _scripted_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1x1 ``conv`` applied in ``x``'s dtype, for TorchScript."""
    bias = conv.bias
    return F.conv2d(x, conv.weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


class PAM(nn.Module):
    """Position attention: each position becomes a weighted sum of all positions.

    ``out = gamma * attended + x`` where ``attended[:, :, i] = sum_j softmax_j(q_i . k_j) v_j``
    over all ``N = H * W`` positions, ``q``, ``k`` and ``v`` are 1x1 convolutions of
    ``x``, and there is no ``1/sqrt(d)`` scaling (as in the authors' ``PAM_Module``,
    whose state dict loads into this module unchanged). ``gamma`` starts at
    ``gamma_init`` (0: the block starts as the identity).

    Query and key projections, energies and softmax run in at least float32, also
    for half inputs and under ``torch.autocast`` (unscaled energies overflow float16).
    The value projection and the output keep the input's (or autocast's) dtype; the
    value-path matmuls run in it too where the device multiplies it faster than float32,
    else in float32 (:func:`attnblocks.functional.low_precision_is_faster`).

    Shapes: ``(B, C, H, W) -> (B, C, H, W)`` for any ``B, H, W``.

    ``torch.jit.script`` compiles it to the ``"bmm"`` computation (``N x N`` matrix);
    ``torch.compile`` and ``torch.export`` keep every backend.

    Args:
        channels: input and output channels ``C``.
        reduction: query/key channels are ``channels // reduction`` (8 in DANet).
        backend: attention backend, one of :data:`attnblocks.functional.POSITION_BACKENDS`.
        chunk_size: query positions per chunk for memory-efficient backends
            (None: chosen by the backend).
        gamma_init: initial value of the learnable residual scale ``gamma``.
        value_split: for the ``"sdpa"`` backend (also when ``"auto"`` picks it): split the
            value width into this many equal parts, the heads of a fused kernel; None lets
            the dispatch choose from what torch's kernels accept
            (:func:`attnblocks.functional.position_attention`).
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 8,
        backend: PositionBackend = "auto",
        chunk_size: int | None = None,
        gamma_init: float = 0.0,
        value_split: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.key_channels = check_reduced_channels(channels, reduction)
        self.channels = channels
        self.backend = check_backend(backend, POSITION_BACKENDS)
        self.chunk_size = check_chunk_size(chunk_size)
        if value_split is not None and check_positive_int("value_split", value_split) > channels:
            raise ValueError(
                f"value_split must be at most channels={channels} (the value width), "
                f"got {value_split}"
            )
        self.value_split = value_split
        self.query_conv, self.key_conv, self.value_conv = query_key_value_convs(
            channels, self.key_channels, **dd
        )
        self.gamma = nn.Parameter(torch.full((1,), float(gamma_init), **dd))

    def _query_key(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Query and key tokens ``(B, H*W, C // reduction)`` in at least float32."""
        dtype = attention_dtype(x.dtype)
        query = project_in(self.query_conv, x, dtype)
        key = project_in(self.key_conv, x, dtype)
        return rearrange(query, "b d h w -> b (h w) d"), rearrange(key, "b d h w -> b (h w) d")

    def forward(self, x: Tensor) -> Tensor:
        """Apply position attention to ``x`` of shape ``(B, C, H, W)``."""
        if torch.jit.is_scripting():
            return self._scripted_forward(x)
        return self._forward(x)

    def _scripted_forward(self, x: Tensor) -> Tensor:
        """TorchScript's forward: the bmm computation, in at least float32, with plain ops
        (the backends' dispatch and einops are Python that TorchScript cannot compile)."""
        if x.dim() != 4 or x.size(1) != self.channels:
            raise ValueError(
                "PAM was built for (B, " + str(self.channels) + ", H, W) inputs, got shape "
                + str(x.shape)
            )  # fmt: skip
        dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        batch, channels, height, width = x.shape
        energies_in = x.to(dtype)
        query = _scripted_conv(self.query_conv, energies_in).flatten(2)  # (B, D, N)
        key = _scripted_conv(self.key_conv, energies_in).flatten(2)  # (B, D, N)
        weights = torch.bmm(query.transpose(1, 2), key).softmax(dim=-1)  # (B, N, N), rows sum to 1
        value = self.value_conv(x).flatten(2)  # (B, C, N)
        attended = torch.bmm(value, weights.to(value.dtype).transpose(1, 2))  # (B, C, N)
        attended = attended.reshape(batch, channels, height, width)
        return torch.addcmul(x, self.gamma.to(x.dtype), attended.to(x.dtype))

    @torch.jit.unused
    def _forward(self, x: Tensor) -> Tensor:
        check_feature_map(x, self.channels, type(self).__name__)
        height, width = x.shape[-2:]
        query, key = self._query_key(x)
        value = rearrange(self.value_conv(x), "b c h w -> b (h w) c")
        attended = position_attention(
            query, key, value, backend=self.backend, chunk_size=self.chunk_size,
            value_split=self.value_split,
        )  # fmt: skip
        attended = rearrange(attended, "b (h w) c -> b c h w", h=height, w=width)
        return torch.addcmul(
            x, self.gamma.to(x.dtype), attended.to(x.dtype)
        )  # x + gamma * attended

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> Tensor:
        """The full ``(B, H*W, H*W)`` attention matrix for ``x`` (row = query position).

        Builds the ``N x N`` matrix: for small maps and inspection only.

        Args:
            x: ``(B, C, H, W)`` input feature map.
        """
        check_feature_map(x, self.channels, type(self).__name__)
        return position_attention_weights(*self._query_key(x))

    @torch.no_grad()
    def attention_map(self, x: Tensor, points: Sequence[tuple[int, int]] | Tensor) -> Tensor:
        """The attention of selected query pixels over the whole map, for visualisation.

        Only the rows of the chosen queries are computed, ``(B, P, N)`` scores, never
        the ``N x N`` matrix, so this works at any resolution.

        Args:
            x: ``(B, C, H, W)`` input feature map.
            points: ``P`` query pixels as ``(row, col)`` pairs, a sequence or a
                ``(P, 2)`` integer tensor.

        Returns:
            ``(B, P, H, W)`` maps, ``out[b, p]`` the softmax weights query pixel
            ``points[p]`` gives every position (each map sums to 1), in at least float32.
        """
        check_feature_map(x, self.channels, type(self).__name__)
        height, width = x.shape[-2:]
        rows, cols = check_points(points, height, width, x.device)
        query, key = self._query_key(x)
        weights = position_attention_weights(query[:, rows * width + cols], key)  # (B, P, N)
        return rearrange(weights, "b p (h w) -> b p h w", h=height, w=width)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, key_channels={self.key_channels}, "
            f"backend={self.backend!r}, chunk_size={self.chunk_size}, "
            f"value_split={self.value_split}"
        )

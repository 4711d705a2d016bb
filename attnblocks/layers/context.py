"""ContextBlock: GCNet's global context block.

Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
ICCV Workshops 2019, https://arxiv.org/abs/1904.11492
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from .._validation import check_choice, check_feature_map, check_positive_int
from ..functional._precision import attention_dtype, autocast_disabled
from ._points import check_points
from ._projection import project_in

ContextPooling = Literal["att", "avg"]
#: Context pooling of :class:`ContextBlock`: attention pooling or plain average.
CONTEXT_POOLINGS: tuple[str, ...] = ("att", "avg")
#: Fusions of :class:`ContextBlock`: add the transformed context, or scale by its sigmoid.
CONTEXT_FUSIONS: tuple[str, ...] = ("channel_add", "channel_mul")


def _check_fusion(fusion: Sequence[str]) -> tuple[str, ...]:
    if isinstance(fusion, str) or not isinstance(fusion, Sequence):
        raise ValueError(
            f"fusion must be a sequence of fusion names such as ('channel_add',), got {fusion!r}"
        )
    if not fusion:
        raise ValueError(f"fusion needs at least one of {CONTEXT_FUSIONS}, got an empty {fusion!r}")
    for name in fusion:
        check_choice("fusion", name, CONTEXT_FUSIONS)
    if len(set(fusion)) != len(fusion):
        raise ValueError(f"fusion names must not repeat, got {tuple(fusion)!r}")
    return tuple(fusion)


def _transform(
    channels: int, planes: int, device: torch.device | str | None, dtype: torch.dtype | None
) -> nn.Sequential:
    """GCNet's bottleneck: 1x1 conv -> LayerNorm over (planes, 1, 1) -> ReLU -> 1x1 conv."""
    dd = {"device": device, "dtype": dtype}
    return nn.Sequential(
        nn.Conv2d(channels, planes, kernel_size=1, **dd),
        nn.LayerNorm([planes, 1, 1], **dd),
        nn.ReLU(inplace=True),
        nn.Conv2d(planes, channels, kernel_size=1, **dd),
    )


class ContextBlock(nn.Module):
    """Global context: one context vector for the whole map, transformed and fused back.

    1. Context: ``sum_j softmax_j(conv_mask(x)_j) x_j`` over all positions
       (``pooling="att"``), or the spatial mean (``"avg"``): ``(B, C, 1, 1)``.
    2. Transform: ``conv -> LayerNorm -> ReLU -> conv`` through ``int(channels * ratio)``
       channels, one per fusion.
    3. Fusion: ``x * sigmoid(mul_term)`` (``"channel_mul"``), then ``+ add_term``
       (``"channel_add"``); either or both.

    This is mmcv's ``ContextBlock`` with its keys (``conv_mask``, ``channel_add_conv``,
    ``channel_mul_conv``: an mmcv state dict loads as it is). The last conv of each
    transform starts at zero (``zero_init_last``), as in GCNet and mmcv: ``channel_add``
    then starts as the identity and ``channel_mul`` as ``x / 2``. The softmax and the
    pooling sum run in at least float32, also under ``torch.autocast``.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)`` for any ``B, H, W``.

    Args:
        channels: input and output channels ``C``.
        ratio: bottleneck width as a fraction of ``channels``.
        pooling: ``"att"`` or ``"avg"``, see :data:`CONTEXT_POOLINGS`.
        fusion: one or both of :data:`CONTEXT_FUSIONS`.
        zero_init_last: start the last conv of each transform at zero (through
            :meth:`zero_init_last`, which timm's models call again after re-initialising
            their convolutions).
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        channels: int,
        ratio: float = 1 / 4,
        pooling: ContextPooling = "att",
        fusion: Sequence[str] = ("channel_add",),
        zero_init_last: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
            raise ValueError(f"ratio must be a positive number, got {ratio!r}")
        self.planes = int(channels * ratio)
        if self.planes < 1:
            raise ValueError(
                f"int(channels * ratio) must be at least 1, got int({channels} * {ratio}) = 0"
            )
        self.ratio = ratio
        self.pooling = check_choice("pooling", pooling, CONTEXT_POOLINGS)
        self.fusion = _check_fusion(fusion)
        if pooling == "att":
            self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1, device=device, dtype=dtype)
        self.channel_add_conv = (
            _transform(channels, self.planes, device, dtype) if "channel_add" in fusion else None
        )
        self.channel_mul_conv = (
            _transform(channels, self.planes, device, dtype) if "channel_mul" in fusion else None
        )
        self.reset_parameters(zero_init_last)

    @torch.no_grad()
    def reset_parameters(self, zero_init_last: bool = True) -> None:
        """GCNet's initialisation: Kaiming (fan-in) mask conv, last transform convs zero.

        Args:
            zero_init_last: zero the last conv of each transform with :meth:`zero_init_last`.
        """
        if self.pooling == "att":
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.conv_mask.bias)
        if zero_init_last:
            self.zero_init_last()

    @torch.no_grad()
    def zero_init_last(self) -> None:
        """Zero the last conv of each transform: ``channel_add`` then adds nothing.

        timm's protocol: a timm model re-initialises every ``Conv2d`` after building
        (these convs included), then calls ``zero_init_last()`` on every module that has
        it (with its ``zero_init_last=True``, the default), so a block built through
        ``block_args=dict(attn_layer=ContextBlock)`` starts as it does alone: the identity
        with ``channel_add`` only, ``x / 2`` with ``channel_mul``.
        """
        for transform in (self.channel_add_conv, self.channel_mul_conv):
            if transform is not None:
                nn.init.zeros_(transform[-1].weight)
                nn.init.zeros_(transform[-1].bias)

    def _pooling_weights(self, x: Tensor) -> Tensor:
        """Attention pooling weights ``(B, 1, H*W)`` (each row sums to 1), at least float32."""
        logits = project_in(self.conv_mask, x, attention_dtype(x.dtype))  # (B, 1, H, W)
        return rearrange(logits, "b 1 h w -> b 1 (h w)").softmax(dim=-1)

    def _context(self, x: Tensor) -> Tensor:
        """The ``(B, C, 1, 1)`` context vector, in the input's dtype."""
        dtype = attention_dtype(x.dtype)
        with autocast_disabled(x.device):
            if self.pooling == "avg":
                context = x.to(dtype).mean(dim=(2, 3), keepdim=True)
            else:
                weights = rearrange(self._pooling_weights(x), "b 1 n -> b n 1")
                maps = rearrange(x.to(dtype), "b c h w -> b c (h w)")  # a view: no copy
                context = rearrange(torch.bmm(maps, weights), "b c 1 -> b c 1 1")
        return context.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Fuse the global context into ``x`` of shape ``(B, C, H, W)``."""
        check_feature_map(x, self.channels, type(self).__name__)
        context = self._context(x)
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context)).to(x.dtype)
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context).to(x.dtype)
        return out

    @torch.no_grad()
    def attention_map(self, x: Tensor, points: Sequence[tuple[int, int]] | Tensor) -> Tensor:
        """The attention pooling weights over the map (``pooling="att"`` only).

        Every query pixel shares the one context, so all ``P`` maps are the same: the
        argument is there so that every block answers the same call.

        Args:
            x: ``(B, C, H, W)`` input feature map.
            points: ``P`` query pixels as ``(row, col)`` pairs, a sequence or a
                ``(P, 2)`` integer tensor.

        Returns:
            ``(B, P, H, W)`` maps, each summing to 1, in at least float32.
        """
        check_feature_map(x, self.channels, type(self).__name__)
        if self.pooling != "att":
            raise ValueError("attention_map needs pooling='att'; average pooling has no weights")
        height, width = x.shape[-2:]
        rows, _ = check_points(points, height, width, x.device)
        weights = rearrange(self._pooling_weights(x), "b 1 (h w) -> b 1 h w", h=height, w=width)
        return weights.expand(-1, len(rows), -1, -1)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, planes={self.planes}, pooling={self.pooling!r}, "
            f"fusion={self.fusion}"
        )

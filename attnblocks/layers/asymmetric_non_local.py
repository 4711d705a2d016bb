"""ANN's asymmetric non-local blocks: keys and values pooled by a pyramid of adaptive pools.

Zhu et al., "Asymmetric Non-local Neural Networks for Semantic Segmentation", ICCV 2019,
https://arxiv.org/abs/1908.07678

A non-local block compares every query pixel with every key pixel (``N x N``). ANN
samples the keys and values instead: adaptive average pools to ``s x s`` grids for each
``s`` of ``key_pool_scales`` (mmseg's ``PPMConcat``: ``1 + 9 + 36 + 64 = 110`` tokens for
``(1, 3, 6, 8)``), so attention costs ``N x 110``. Both blocks are mmseg's
(``mmseg/models/decode_heads/ann_head.py``), built on :class:`SelfAttentionBlock`:

- :class:`AsymmetricFusionNonLocal` (AFNB) fuses two levels: queries from the high
  (deeper) features, keys and values from the low ones; the context is concatenated
  with the high features and fused by a 1x1 conv-norm.
- :class:`AsymmetricPyramidNonLocal` (APNB) is the self-attention version on one map;
  the context is concatenated with the input and fused by a 1x1 conv-norm-act.

Each block has one :class:`SelfAttentionBlock` per entry of ``query_scales`` (``stages``),
whose contexts are summed. mmseg's query scales above 1 max-pool the queries, after which
its block cannot restore the map (it reshapes the pooled context to the input's size and
fails); every mmseg ANN config uses ``(1,)``, and only 1 is accepted here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from .._validation import check_feature_map, check_positive_int
from ._inplace import safe_for_inplace
from .conv_norm_act import ConvNormAct, LayerFactory
from .self_attention_block import SelfAttentionBlock


def _check_scales(name: str, scales: Sequence[int]) -> tuple[int, ...]:
    scales = tuple(scales)
    if not scales:
        raise ValueError(f"{name} must name at least one scale, got {scales!r}")
    for scale in scales:
        check_positive_int(f"each of {name}", scale)
    return scales


def _check_query_scales(query_scales: Sequence[int]) -> tuple[int, ...]:
    scales = _check_scales("query_scales", query_scales)
    if any(scale != 1 for scale in scales):
        raise ValueError(
            f"query_scales must all be 1, got {scales}: mmseg's ANN pools the queries for "
            "a scale above 1 and then cannot restore the map (every mmseg ANN config uses (1,))"
        )
    return scales


class PyramidPooling(nn.Module):
    """Adaptive average pools to ``s x s`` for each scale, flattened and concatenated.

    mmseg's ``PPMConcat`` (no parameters): the key/value sampler of ANN's blocks.

    Shapes: ``(B, C, H, W)`` -> ``(B, C, sum(s * s))``, any ``H, W`` (a grid smaller than
    ``s`` repeats pixels, as ``nn.AdaptiveAvgPool2d`` does).

    Args:
        scales: the grid sizes, e.g. ``(1, 3, 6, 8)``.
    """

    def __init__(self, scales: Sequence[int] = (1, 3, 6, 8)) -> None:
        super().__init__()
        self.scales = _check_scales("key_pool_scales", scales)
        self.pools = nn.ModuleList(nn.AdaptiveAvgPool2d(scale) for scale in self.scales)

    def forward(self, x: Tensor) -> Tensor:
        """Pool ``x`` of shape ``(B, C, H, W)`` to ``(B, C, sum(s * s))`` tokens."""
        return torch.cat([rearrange(pool(x), "b c h w -> b c (h w)") for pool in self.pools], 2)

    def extra_repr(self) -> str:
        return f"scales={self.scales}"


def _stages(
    query_scales: tuple[int, ...],
    key_pool_scales: Sequence[int],
    key_in_channels: int,
    query_in_channels: int,
    key_channels: int,
    out_channels: int,
    share_key_query: bool,
    **options: object,
) -> nn.ModuleList:
    """One ANN :class:`SelfAttentionBlock` per query scale (mmseg's ANN block): one
    conv-norm-act key/query projection, plain value/out convolutions, scaled energies,
    keys and values pooled by :class:`PyramidPooling`."""
    return nn.ModuleList(
        SelfAttentionBlock(
            key_in_channels,
            query_in_channels,
            key_channels,
            out_channels,
            share_key_query=share_key_query,
            key_downsample=PyramidPooling(key_pool_scales),
            key_query_num_convs=1,
            key_query_norm=True,
            value_out_num_convs=1,
            value_out_norm=False,
            matmul_norm=True,
            with_out=True,
            **options,
        )
        for _ in query_scales
    )


class AsymmetricFusionNonLocal(nn.Module):
    """ANN's AFNB: high-level queries attend over pyramid-pooled low-level keys and values.

    ::

        context = sum over stages of SelfAttentionBlock(query=high, key=low)
        out = bottleneck([context, high])     (1x1 conv, norm, no activation)

    State dict as mmseg's ``AFNB`` (``stages.{i}.key_project.conv.weight``, ...,
    ``bottleneck.conv.weight``, ``bottleneck.norm.*``), ConvModule's ``bn`` named ``norm``.

    Shapes: ``low (B, low_channels, H_l, W_l)`` and ``high (B, high_channels, H, W)`` ->
    ``(B, out_channels, H, W)``; the two maps may differ in size (keys are pooled).

    Args:
        low_channels: channels of the low-level (key/value) features.
        high_channels: channels of the high-level (query) features.
        key_channels: width of the projected queries, keys and values (None:
            ``high_channels // 8``, 256 for ResNet's 2048 as mmseg's ANN).
        out_channels: output channels (None: ``high_channels``, as mmseg's ANN).
        query_scales: one attention stage per entry; each must be 1 (see the module
            docstring).
        key_pool_scales: the grid sizes of the key/value pyramid.
        norm_layer: normalisation of the projections and the bottleneck.
        act_layer: activation of the key/query projections.
        backend: position-attention backend of the stages.
        chunk_size: query positions per chunk of the ``"chunked"`` backend.
        zero_init_last: start each stage's plain out projection at zero, as mmseg does.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        key_channels: int | None = None,
        out_channels: int | None = None,
        query_scales: Sequence[int] = (1,),
        key_pool_scales: Sequence[int] = (1, 3, 6, 8),
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        backend: str = "auto",
        chunk_size: int | None = None,
        zero_init_last: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        check_positive_int("low_channels", low_channels)
        check_positive_int("high_channels", high_channels)
        key_channels = max(high_channels // 8, 1) if key_channels is None else key_channels
        out_channels = high_channels if out_channels is None else out_channels
        self.low_channels, self.high_channels = low_channels, high_channels
        self.key_channels, self.out_channels = key_channels, out_channels
        self.stages = _stages(
            _check_query_scales(query_scales), key_pool_scales, low_channels, high_channels,
            key_channels, out_channels, share_key_query=False, norm_layer=norm_layer,
            act_layer=act_layer, backend=backend, chunk_size=chunk_size,
            zero_init_last=zero_init_last, **dd,
        )  # fmt: skip
        self.bottleneck = ConvNormAct(
            out_channels + high_channels, out_channels, 1, norm_layer=norm_layer,
            act_layer=nn.Identity, **dd,
        )  # fmt: skip

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        """Fuse ``low`` ``(B, low_channels, H_l, W_l)`` into ``high`` ``(B, high_channels, H,
        W)``."""
        name = type(self).__name__
        check_feature_map(low, self.low_channels, f"{name} low")
        check_feature_map(high, self.high_channels, f"{name} high")
        context = sum(stage(high, low) for stage in self.stages)
        return self.bottleneck(torch.cat([context, high], dim=1))

    @torch.no_grad()
    def attention_map(
        self, low: Tensor, high: Tensor, points: Sequence[tuple[int, int]] | Tensor
    ) -> Tensor:
        """The first stage's weights of selected high-level pixels over the key pyramid.

        Args:
            low: ``(B, low_channels, H_l, W_l)`` low-level features.
            high: ``(B, high_channels, H, W)`` high-level features.
            points: ``P`` query pixels of ``high`` as ``(row, col)`` pairs.

        Returns:
            ``(B, P, sum(s * s))`` weights over the pooled tokens (scale by scale, each
            grid row-major), each row summing to 1, in at least float32.
        """
        return self.stages[0].attention_map(high, points, low)

    def extra_repr(self) -> str:
        return (
            f"low_channels={self.low_channels}, high_channels={self.high_channels}, "
            f"key_channels={self.key_channels}, out_channels={self.out_channels}"
        )


class AsymmetricPyramidNonLocal(nn.Module):
    """ANN's APNB: self-attention over pyramid-pooled keys and values, fused with the input.

    ::

        context = sum over stages of SelfAttentionBlock(query=x, key=x)  (shared key/query conv)
        out = bottleneck([context, x])     (1x1 conv, norm, activation)

    State dict as mmseg's ``APNB`` with one name for the shared key/query projection:
    ``stages.{i}.key_project.*`` (mmseg lists it again as ``query_project``),
    ``value_project``, ``out_project``, ``bottleneck.conv``/``bottleneck.norm``. Channels
    first, so it builds as a timm ``attn_layer`` (``AsymmetricPyramidNonLocal(channels)``);
    it is not an identity at initialisation (the bottleneck is a conv-norm-act).

    Shapes: ``(B, channels, H, W)`` -> ``(B, out_channels, H, W)``, any ``B, H, W``.

    Args:
        channels: input channels.
        key_channels: width of the projected queries, keys and values (None:
            ``channels // 2``, 256 for mmseg ANN's 512).
        out_channels: output channels (None: ``channels``).
        query_scales: one attention stage per entry; each must be 1.
        key_pool_scales: the grid sizes of the key/value pyramid.
        norm_layer: normalisation of the projections and the bottleneck.
        act_layer: activation of the key/query projection and the bottleneck.
        backend: position-attention backend of the stages.
        chunk_size: query positions per chunk of the ``"chunked"`` backend.
        zero_init_last: start each stage's plain out projection at zero, as mmseg does.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        channels: int,
        key_channels: int | None = None,
        out_channels: int | None = None,
        query_scales: Sequence[int] = (1,),
        key_pool_scales: Sequence[int] = (1, 3, 6, 8),
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        backend: str = "auto",
        chunk_size: int | None = None,
        zero_init_last: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        check_positive_int("channels", channels)
        key_channels = max(channels // 2, 1) if key_channels is None else key_channels
        out_channels = channels if out_channels is None else out_channels
        self.channels, self.key_channels, self.out_channels = channels, key_channels, out_channels
        self.stages = _stages(
            _check_query_scales(query_scales), key_pool_scales, channels, channels,
            key_channels, out_channels, share_key_query=True, norm_layer=norm_layer,
            act_layer=act_layer, backend=backend, chunk_size=chunk_size,
            zero_init_last=zero_init_last, **dd,
        )  # fmt: skip
        self.bottleneck = ConvNormAct(
            out_channels + channels, out_channels, 1, norm_layer=norm_layer,
            act_layer=act_layer, **dd,
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` of shape ``(B, channels, H, W)``."""
        check_feature_map(x, self.channels, type(self).__name__)
        context = sum(stage(x) for stage in self.stages)
        return safe_for_inplace(self.bottleneck(torch.cat([context, x], dim=1)))

    @torch.no_grad()
    def attention_map(self, x: Tensor, points: Sequence[tuple[int, int]] | Tensor) -> Tensor:
        """The first stage's weights of selected pixels over the key pyramid.

        Args:
            x: ``(B, channels, H, W)`` input feature map.
            points: ``P`` query pixels as ``(row, col)`` pairs.

        Returns:
            ``(B, P, sum(s * s))`` weights over the pooled tokens (scale by scale, each
            grid row-major), each row summing to 1, in at least float32.
        """
        check_feature_map(x, self.channels, type(self).__name__)
        return self.stages[0].attention_map(x, points)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, key_channels={self.key_channels}, "
            f"out_channels={self.out_channels}"
        )

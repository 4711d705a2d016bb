"""InterlacedSparseSelfAttention: ISANet's long-range then short-range attention.

Huang et al., "Interlaced Sparse Self-Attention for Semantic Segmentation", 2019,
https://arxiv.org/abs/1907.12273

Dense self-attention over ``N`` pixels costs ``N x N``. ISA factorises it into two sparse
steps over a grid of ``loc_h x loc_w`` local groups (``down_factor``):

- long range: the pixels at the same offset inside every local group (an interlaced
  ``glb_h x glb_w`` grid, one pixel every ``loc`` rows and columns) attend to each other;
- short range: the pixels of each ``loc_h x loc_w`` local group attend to each other.

After both, every pixel has received information from every other. A map whose size is
not a multiple of ``down_factor`` is zero-padded first, split as evenly as possible
between the two sides (more after than before), and cropped back after, exactly as
mmseg's ``ISAHead`` (``mmseg/models/decode_heads/isa_head.py``) does; the padded zeros
take part in the attention as mmseg's do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .._validation import check_feature_map, check_positive_int
from ._inplace import safe_for_inplace
from ._points import check_points
from .conv_norm_act import ConvNormAct, LayerFactory
from .self_attention_block import SelfAttentionBlock


class ISAAttentionMaps(NamedTuple):
    """The two sparse attention maps of selected pixels, on the padded grid."""

    long_range: Tensor  #: ``(B, P, H_pad, W_pad)``: zero outside the pixel's interlaced group
    short_range: Tensor  #: ``(B, P, H_pad, W_pad)``: zero outside the pixel's local group


class _Relation(SelfAttentionBlock):
    """ISA's relation: self-attention (two conv-norm-act key/query convs, a plain value conv,
    scaled energies, no out projection) then a 1x1 conv-norm-act ``output_project``.

    mmseg's ``isa_head.SelfAttentionBlock``, same keys (``bn`` named ``norm``).
    """

    def __init__(
        self,
        channels: int,
        key_channels: int,
        norm_layer: LayerFactory,
        act_layer: LayerFactory,
        **options: object,
    ) -> None:
        super().__init__(
            channels, channels, key_channels, channels, key_query_num_convs=2,
            key_query_norm=True, value_out_num_convs=1, value_out_norm=False, matmul_norm=True,
            with_out=False, norm_layer=norm_layer, act_layer=act_layer, **options,
        )  # fmt: skip
        factory = {key: options[key] for key in ("device", "dtype") if key in options}
        self.output_project = ConvNormAct(
            channels, channels, 1, norm_layer=norm_layer, act_layer=act_layer, **factory
        )
        nn.init.kaiming_normal_(self.output_project.conv.weight, mode="fan_out",
                                nonlinearity="relu")  # fmt: skip

    def forward(self, x: Tensor, key_feats: Tensor | None = None) -> Tensor:
        """``output_project`` of the self-attention context of ``x``."""
        return self.output_project(super().forward(x, key_feats))


class InterlacedSparseSelfAttention(nn.Module):
    """ISANet's interlaced sparse self-attention: long-range, then short-range relation.

    ::

        x (padded to multiples of down_factor)
          -> global_relation within each interlaced group (pixels loc apart)
          -> local_relation within each loc_h x loc_w group
          -> cropped back to (H, W)

    Each relation is mmseg's ISA ``SelfAttentionBlock``: queries and keys from two 1x1
    conv-norm-act layers to ``key_channels``, values from a plain 1x1 conv, softmax of
    ``q . k / sqrt(key_channels)`` on the position backends, then a 1x1 conv-norm-act
    ``output_project``. State dict as mmseg's ``ISAHead`` has them:
    ``global_relation.*``, ``local_relation.*`` (``bn`` named ``norm``).

    The block returns the relations' output, not a residual (ISANet concatenates it with
    the input in its head). Channels first, so it builds as a timm ``attn_layer``.

    Shapes: ``(B, channels, H, W)`` -> ``(B, channels, H, W)``, any ``B, H, W``.

    Args:
        channels: input and output channels.
        key_channels: width of queries and keys (None: ``channels // 2``, 256 for
            mmseg ISANet's 512).
        down_factor: ``(loc_h, loc_w)``, the size of a local group (mmseg: ``(8, 8)``).
        norm_layer: normalisation of the conv-norm-act layers.
        act_layer: activation of the conv-norm-act layers.
        backend: position-attention backend of both relations.
        chunk_size: query positions per chunk of the ``"chunked"`` backend.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        channels: int,
        key_channels: int | None = None,
        down_factor: Sequence[int] = (8, 8),
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        backend: str = "auto",
        chunk_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("channels", channels)
        key_channels = max(channels // 2, 1) if key_channels is None else key_channels
        down_factor = tuple(down_factor)
        if len(down_factor) != 2:
            raise ValueError(f"down_factor must be (loc_h, loc_w), got {down_factor!r}")
        for value in down_factor:
            check_positive_int("each of down_factor", value)
        self.channels, self.key_channels = channels, key_channels
        self.down_factor: tuple[int, int] = down_factor  # type: ignore[assignment]
        options = dict(norm_layer=norm_layer, act_layer=act_layer, backend=backend,
                       chunk_size=chunk_size, device=device, dtype=dtype)  # fmt: skip
        self.global_relation = _Relation(channels, key_channels, **options)
        self.local_relation = _Relation(channels, key_channels, **options)

    def _padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """mmseg's zero padding ``(left, right, top, bottom)`` up to multiples of down_factor."""
        loc_h, loc_w = self.down_factor
        pad_h = math.ceil(height / loc_h) * loc_h - height
        pad_w = math.ceil(width / loc_w) * loc_w - width
        return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2

    def _split_long_range(self, x: Tensor) -> Tensor:
        """``(B, C, H_pad, W_pad)`` -> interlaced groups ``(B * loc_h * loc_w, C, gh, gw)``."""
        loc_h, loc_w = self.down_factor
        return rearrange(x, "b c (gh lh) (gw lw) -> (b lh lw) c gh gw", lh=loc_h, lw=loc_w)

    def forward(self, x: Tensor) -> Tensor:
        """Apply both relations to ``x`` of shape ``(B, channels, H, W)``."""
        check_feature_map(x, self.channels, type(self).__name__)
        batch, _, height, width = x.shape
        loc_h, loc_w = self.down_factor
        left, right, top, bottom = self._padding(height, width)
        x = F.pad(x, (left, right, top, bottom))
        glb_h, glb_w = x.shape[2] // loc_h, x.shape[3] // loc_w
        x = self.global_relation(self._split_long_range(x))
        x = rearrange(x, "(b lh lw) c gh gw -> (b gh gw) c lh lw", b=batch, lh=loc_h, lw=loc_w)
        x = self.local_relation(x)
        x = rearrange(x, "(b gh gw) c lh lw -> b c (gh lh) (gw lw)", b=batch, gh=glb_h, gw=glb_w)
        return safe_for_inplace(x[:, :, top : top + height, left : left + width])

    @torch.no_grad()
    def attention_map(
        self, x: Tensor, points: Sequence[tuple[int, int]] | Tensor
    ) -> ISAAttentionMaps:
        """The long-range and short-range weights of selected pixels, on the padded grid.

        The long-range map is nonzero on the pixel's interlaced group, the short-range
        map on its local group; each sums to 1 over the padded grid (whose padding rows
        and columns, :meth:`padding`, take part as in mmseg).

        Args:
            x: ``(B, channels, H, W)`` input feature map.
            points: ``P`` pixels of ``x`` as ``(row, col)`` pairs.

        Returns:
            :class:`ISAAttentionMaps` of two ``(B, P, H_pad, W_pad)`` maps in at least
            float32; pixel ``(r, c)`` of ``x`` is ``(r + top, c + left)`` on that grid.
        """
        check_feature_map(x, self.channels, type(self).__name__)
        batch, _, height, width = x.shape
        rows, cols = check_points(points, height, width, x.device)
        loc_h, loc_w = self.down_factor
        left, right, top, bottom = self._padding(height, width)
        padded = F.pad(x, (left, right, top, bottom))
        glb_h, glb_w = padded.shape[2] // loc_h, padded.shape[3] // loc_w
        rows, cols = rows + top, cols + left
        groups = self._split_long_range(padded)  # (b lh lw) c gh gw
        long_maps = []
        for row, col in zip(rows.tolist(), cols.tolist()):
            group = torch.arange(batch, device=x.device) * loc_h * loc_w + (row % loc_h) * loc_w
            group = group + col % loc_w
            weights = self.global_relation.attention_map(
                groups[group], [(row // loc_h, col // loc_w)]
            )  # (B, 1, glb_h, glb_w)
            grid = weights.new_zeros(batch, glb_h, loc_h, glb_w, loc_w)
            grid[:, :, row % loc_h, :, col % loc_w] = weights[:, 0]
            long_maps.append(rearrange(grid, "b gh lh gw lw -> b (gh lh) (gw lw)"))
        attended = self.global_relation(groups)
        local = rearrange(attended, "(b lh lw) c gh gw -> (b gh gw) c lh lw", b=batch, lh=loc_h,
                          lw=loc_w)  # fmt: skip
        short_maps = []
        for row, col in zip(rows.tolist(), cols.tolist()):
            group = torch.arange(batch, device=x.device) * glb_h * glb_w + (row // loc_h) * glb_w
            group = group + col // loc_w
            weights = self.local_relation.attention_map(local[group], [(row % loc_h, col % loc_w)])
            grid = weights.new_zeros(batch, glb_h, loc_h, glb_w, loc_w)
            grid[:, row // loc_h, :, col // loc_w, :] = weights[:, 0]
            short_maps.append(rearrange(grid, "b gh lh gw lw -> b (gh lh) (gw lw)"))
        return ISAAttentionMaps(torch.stack(long_maps, 1), torch.stack(short_maps, 1))

    def padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """The zero padding ``(left, right, top, bottom)`` of an ``height x width`` map.

        Args:
            height: the map's height.
            width: the map's width.
        """
        check_positive_int("height", height)
        check_positive_int("width", width)
        return self._padding(height, width)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, key_channels={self.key_channels}, "
            f"down_factor={self.down_factor}"
        )

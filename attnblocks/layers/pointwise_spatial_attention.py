"""PointwiseSpatialAttention: PSANet's collect and distribute attention.

Zhao et al., "PSANet: Point-wise Spatial Attention Network for Scene Parsing", ECCV 2018,
https://hszhao.github.io/papers/eccv18_psanet.pdf

Each pixel predicts, from its own features, an ``h_m x w_m`` mask of weights centred on
itself (a 1x1 convolution to ``h_m * w_m`` channels), instead of comparing itself with
every other pixel as the non-local block does. :func:`attnblocks.functional.psa_mask`
places the masks on the map, a softmax over positions normalises them, and the features
are aggregated with them in two directions:

- collect: pixel ``i`` gathers ``sum_j a_ij x_j`` with the weights ``a_i`` it predicted;
- distribute: pixel ``j`` sends ``x_j`` to every ``i`` with the weights ``b_j`` it
  predicted: ``sum_j b_ji x_j``.

As in mmsegmentation's ``PSAHead`` (and the authors' code), the features are first
reduced (1x1 conv-norm-act) and shrunk (``shrink_factor``; bilinear), the two results
are concatenated and projected back to the input's channels (a 1x1 conv-norm-act with
padding 1, which grows the map by a pixel on each side, kept as mmseg has it) and
resized to the input's size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .._validation import (
    check_choice,
    check_feature_map,
    check_positive_int,
    default_inter_channels,
)
from ..functional._precision import attention_dtype
from ..functional.psa_mask import check_mask_size, psa_mask
from ._points import check_points
from ._projection import project_in
from .conv_norm_act import ConvNormAct, LayerFactory

PSAModuleType = Literal["collect", "distribute", "bi-direction"]
#: The attention directions of :class:`PointwiseSpatialAttention`.
PSA_MODULE_TYPES: tuple[str, ...] = ("collect", "distribute", "bi-direction")


def _mask_predictor(channels: int, mask_cells: int, layers: dict) -> nn.Sequential:
    """A 1x1 conv-norm-act, then a bias-free 1x1 convolution to the mask's cells."""
    dd = {"device": layers["device"], "dtype": layers["dtype"]}
    return nn.Sequential(
        ConvNormAct(channels, channels, 1, **layers),
        nn.Conv2d(channels, mask_cells, kernel_size=1, bias=False, **dd),
    )


class PointwiseSpatialAttention(nn.Module):
    """PSANet's point-wise spatial attention (see the module docstring).

    ::

        x -> reduce (1x1 conv-norm-act to inter_channels) -> shrink -> mask (1x1 conv-norm-act,
          1x1 conv to h_m * w_m logits) -> psa_mask -> softmax over positions -> aggregate
        [the distribute branch alike with reduce_p, mask_p] -> concatenate -> proj (1x1
          conv-norm-act, padding 1, to channels) -> resize to x's size

    Shrinking follows mmseg: a map whose height and width are both not multiples of
    ``shrink_factor`` becomes ``((H - 1) // s + 1, (W - 1) // s + 1)`` with
    ``align_corners=True``, any other ``(H // s, W // s)`` with ``align_corners=False``;
    the final resize uses the same alignment (``align_corners`` only with
    ``shrink_factor=1``). The layout is mmseg's ``PSAHead`` minus its bottleneck and
    classifier: ``reduce``, ``mask`` (mmseg's ``attention``), ``reduce_p``, ``mask_p``
    (``attention_p``, bi-direction only) and ``proj``, each ``ConvModule`` as
    ``conv``/``norm``/``act``. Single-direction blocks have ``reduce`` and ``mask`` only.

    Positions outside a pixel's mask are placed as zeros and so enter the softmax with
    logit 0, as in mmseg and the authors' code: they keep a small weight, not none.

    The output is new features, not ``x`` plus a residual: the block does not start as
    the identity and is not meant as a timm ``attn_layer``. The mask logits and the
    softmax run in at least float32, also under ``torch.autocast``; the aggregation runs
    in the features' (or autocast's) dtype. Memory grows with ``(H * W / s^2)^2``: each
    pixel's weights cover the whole shrunk map.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)`` for any ``B, H, W``.

    Args:
        channels: input and output channels ``C``.
        mask_size: ``(h_m, w_m)`` of each pixel's mask (or one int), e.g. mmseg's
            ``(97, 97)`` for Cityscapes and VOC, ``(66, 66)`` for ADE20K.
        inter_channels: channels of the reduced features (default ``channels // 4``:
            512 on a ResNet-50/101, as mmseg).
        psa_type: ``"collect"``, ``"distribute"`` or ``"bi-direction"`` (both, concatenated).
        shrink_factor: how much the map shrinks before the attention (1: not at all).
        compact: the mask convolution predicts a whole-map mask directly (``h_m * w_m``
            must then equal the shrunk map's ``h * w``), which is used as is or transposed
            as mmseg does (transposed for ``"collect"`` and for the distribute branch of
            ``"bi-direction"``, not for ``"distribute"``), instead of going through
            ``psa_mask``.
        normalization_factor: divides the aggregated features (None: ``h_m * w_m``).
        psa_softmax: normalise the placed masks with a softmax over positions (else raw).
        align_corners: of the final resize when ``shrink_factor`` is 1.
        norm_layer: normalisation of the conv-norm-act units.
        act_layer: activation of the conv-norm-act units.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        channels: int,
        mask_size: int | tuple[int, int],
        inter_channels: int | None = None,
        psa_type: PSAModuleType = "bi-direction",
        shrink_factor: int = 2,
        compact: bool = False,
        normalization_factor: float | None = 1.0,
        psa_softmax: bool = True,
        align_corners: bool = False,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.inter_channels = inter = default_inter_channels(channels, inter_channels)
        self.mask_size = check_mask_size(mask_size)
        self.psa_type = check_choice("psa_type", psa_type, PSA_MODULE_TYPES)
        self.shrink_factor = check_positive_int("shrink_factor", shrink_factor)
        cells = self.mask_size[0] * self.mask_size[1]
        if normalization_factor is None:
            normalization_factor = cells
        if isinstance(normalization_factor, bool) or not isinstance(
            normalization_factor, (int, float)
        ):
            raise ValueError(
                f"normalization_factor must be a positive number or None, got "
                f"{normalization_factor!r}"
            )
        if not normalization_factor > 0:
            raise ValueError(
                f"normalization_factor must be a positive number or None, got "
                f"{normalization_factor!r}"
            )
        self.normalization_factor = float(normalization_factor)
        self.compact = bool(compact)
        self.psa_softmax = bool(psa_softmax)
        self.align_corners = bool(align_corners)
        dd = {"device": device, "dtype": dtype}
        layers = {"norm_layer": norm_layer, "act_layer": act_layer, **dd}
        self.reduce = ConvNormAct(channels, inter, 1, **layers)
        self.mask = _mask_predictor(inter, cells, layers)
        if psa_type == "bi-direction":
            self.reduce_p = ConvNormAct(channels, inter, 1, **layers)
            self.mask_p = _mask_predictor(inter, cells, layers)
        branches = 2 if psa_type == "bi-direction" else 1
        # mmseg's proj: a 1x1 convolution with padding 1 (the map grows by one pixel a side).
        conv = nn.Conv2d(branches * inter, channels, kernel_size=1, padding=1, bias=False, **dd)
        self.proj = nn.Sequential(
            OrderedDict(conv=conv, norm=norm_layer(channels, **dd), act=act_layer())
        )

    @property
    def directions(self) -> tuple[str, ...]:
        """The branches' directions, in order: ``("collect", "distribute")`` for bi-direction."""
        return ("collect", "distribute") if self.psa_type == "bi-direction" else (self.psa_type,)

    def shrunk_size(self, height: int, width: int) -> tuple[int, int, bool]:
        """The attention grid of an ``H x W`` input and the resizes' ``align_corners``.

        Args:
            height: the input's ``H``.
            width: the input's ``W``.
        """
        factor = self.shrink_factor
        if factor == 1:
            return height, width, self.align_corners
        if height % factor and width % factor:
            return (height - 1) // factor + 1, (width - 1) // factor + 1, True
        return height // factor, width // factor, False

    def _weights(self, logits: Tensor, direction: str) -> Tensor:
        """``(B, N, N)`` weights ``w[b, q, p]`` of position ``q`` for output pixel ``p``
        from the mask logits ``(B, h_m * w_m, h, w)``, in at least float32."""
        height, width = logits.shape[-2:]
        if self.compact:
            if logits.shape[1] != height * width:
                raise ValueError(
                    f"compact PSA needs mask_size with h_m * w_m = h * w of the shrunk map; "
                    f"mask_size {self.mask_size} has {logits.shape[1]} cells, the map is "
                    f"{height} x {width}"
                )
            weights = rearrange(logits, "b c h w -> b c (h w)")
            # mmseg (and the authors) transpose a collect-only block's weights and, in
            # bi-direction, the distribute branch's; a distribute-only block uses them as they are.
            if self.psa_type == "collect" or (
                self.psa_type == "bi-direction" and direction == "distribute"
            ):
                weights = weights.transpose(1, 2)
        else:
            weights = rearrange(psa_mask(logits, direction, self.mask_size), "b q h w -> b q (h w)")
        return weights.softmax(dim=1) if self.psa_softmax else weights  # over positions q

    def _branches(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], tuple[int, int, bool]]:
        """Each branch's shrunk features ``(B, C', h, w)`` and weights ``(B, h*w, h*w)``."""
        height, width, align = self.shrunk_size(*x.shape[-2:])
        modules = [(self.reduce, self.mask)]
        if self.psa_type == "bi-direction":
            modules.append((self.reduce_p, self.mask_p))
        features, weights = [], []
        for (reduce, mask), direction in zip(modules, self.directions):
            reduced = reduce(x)
            if self.shrink_factor != 1:
                reduced = F.interpolate(reduced, size=(height, width), mode="bilinear",
                                        align_corners=align)  # fmt: skip
            logits = project_in(mask[1], mask[0](reduced), attention_dtype(x.dtype))
            features.append(reduced)
            weights.append(self._weights(logits, direction))
        return features, weights, (height, width, align)

    def forward(self, x: Tensor) -> Tensor:
        """PSA features ``(B, C, H, W)`` of ``x`` of shape ``(B, C, H, W)``."""
        check_feature_map(x, self.channels, type(self).__name__)
        features, weights, (height, width, align) = self._branches(x)
        outs = []
        for reduced, weight in zip(features, weights):
            maps = rearrange(reduced, "b c h w -> b c (h w)")
            out = torch.bmm(maps, weight.to(maps.dtype)) * (1.0 / self.normalization_factor)
            outs.append(rearrange(out, "b c (h w) -> b c h w", h=height, w=width))
        out = self.proj(torch.cat(outs, dim=1))  # (B, C, h + 2, w + 2): padding 1, as mmseg
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=align)
        return out.to(x.dtype)

    @torch.no_grad()
    def attention_map(
        self,
        x: Tensor,
        points: Sequence[tuple[int, int]] | Tensor,
        direction: str | None = None,
    ) -> Tensor:
        """The weights with which selected pixels of the attention grid aggregate it.

        The attention runs on the shrunk grid (:meth:`shrunk_size`), so ``points`` and the
        maps are on that grid.

        Args:
            x: ``(B, C, H, W)`` input feature map.
            points: ``P`` pixels of the shrunk grid as ``(row, col)`` pairs, a sequence or
                a ``(P, 2)`` integer tensor.
            direction: the branch, ``"collect"`` or ``"distribute"``; None: the first
                (collect in ``"bi-direction"``).

        Returns:
            ``(B, P, h, w)`` maps over the shrunk grid (each sums to 1 with
            ``psa_softmax``), in at least float32.
        """
        check_feature_map(x, self.channels, type(self).__name__)
        direction = self.directions[0] if direction is None else direction
        check_choice(f"direction of this {self.psa_type} block", direction, self.directions)
        height, width, _ = self.shrunk_size(*x.shape[-2:])
        rows, cols = check_points(points, height, width, x.device)
        _, weights, _ = self._branches(x)
        chosen = weights[self.directions.index(direction)][:, :, rows * width + cols]
        return rearrange(chosen, "b (h w) p -> b p h w", h=height, w=width)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, inter_channels={self.inter_channels}, "
            f"mask_size={self.mask_size}, psa_type={self.psa_type!r}, "
            f"shrink_factor={self.shrink_factor}, compact={self.compact}"
        )

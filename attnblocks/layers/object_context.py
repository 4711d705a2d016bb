"""OCRNet's object-contextual representations: class regions, then pixel-region attention.

Yuan et al., "Object-Contextual Representations for Semantic Segmentation", ECCV 2020,
https://arxiv.org/abs/1909.11065

Two steps, as mmsegmentation's ``OCRHead`` runs them:

1. :class:`SpatialGather` (mmseg's ``SpatialGatherModule``): a coarse prediction's
   logits, softmaxed over the positions, weight the pixel features into one
   representation per class (the "object regions").
2. :class:`ObjectContextBlock` (mmseg's ``ObjectAttentionBlock``): every pixel attends
   over those ``K`` regions (a :class:`~attnblocks.layers.SelfAttentionBlock` whose
   queries are the pixels and whose keys and values are the regions), and the context
   is fused with the pixel's own features by a 1x1 conv-norm-act.

The attention matrix is ``N x K`` (pixels by classes), never ``N x N``.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from .._validation import check_feature_map, check_float_tensor, check_positive_int
from ..functional._precision import attention_dtype, autocast_disabled
from .conv_norm_act import ConvNormAct, LayerFactory
from .self_attention_block import SelfAttentionBlock


def _check_scale(scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    return float(scale)


class SpatialGather(nn.Module):
    """Class region representations: pixel features averaged under each class's soft mask.

    For class ``k``, ``r_k = sum_i softmax_i(scale * logits_k)_i * f_i`` over the positions
    ``i`` (the softmax runs over positions, not classes: each class's map sums to 1).
    mmseg's ``SpatialGatherModule``; it has no parameters.

    The softmax runs in at least float32 with autocast off; the weighted sum (a
    ``(K x N) @ (N x C)`` product of probabilities and features) runs in the features'
    dtype, or autocast's, as the plain computation does.

    Shapes: ``features (B, C, H, W)`` and ``logits (B, K, H, W)`` -> ``(B, C, K, 1)``:
    the ``K`` regions as a ``K x 1`` map, the layout mmseg's object attention reads
    (its 1x1 projections apply to it as to any feature map).

    Args:
        scale: factor on the logits before the softmax (mmseg's ``scale``, 1 in every
            release); larger values sharpen the class masks.
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = _check_scale(scale)

    def forward(self, features: Tensor, logits: Tensor) -> Tensor:
        """The ``K`` region representations of ``features`` under the classes of ``logits``.

        Args:
            features: ``(B, C, H, W)`` pixel features.
            logits: ``(B, K, H, W)`` class logits of a coarse prediction, at the
                features' resolution.

        Returns:
            ``(B, C, K, 1)`` region representations, in the features' dtype (autocast's
            under autocast).

        Raises:
            ValueError: for inputs that are not 4D floating-point maps, or of different
                batch or spatial sizes.
        """
        check_float_tensor("SpatialGather features", features, ("B", "C", "H", "W"))
        check_float_tensor("SpatialGather logits", logits, ("B", "K", "H", "W"))
        if features.shape[0] != logits.shape[0] or features.shape[2:] != logits.shape[2:]:
            raise ValueError(
                "SpatialGather needs features and logits of one batch and spatial size, got "
                f"features {tuple(features.shape)} and logits {tuple(logits.shape)}"
            )
        if features.shape[2] * features.shape[3] == 0:
            raise ValueError(
                f"SpatialGather expects non-empty maps, got features {tuple(features.shape)}"
            )
        with autocast_disabled(logits.device):
            scores = rearrange(logits, "b k h w -> b k (h w)").to(attention_dtype(logits.dtype))
            masks = (self.scale * scores).softmax(dim=-1)  # over positions: each class sums to 1
        tokens = rearrange(features, "b c h w -> b (h w) c")
        # The value path in the features' dtype (autocast's under autocast): masks lie in [0, 1].
        regions = torch.bmm(masks.to(tokens.dtype), tokens)  # (B, K, C)
        return rearrange(regions, "b k c -> b c k 1")

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class ObjectContextBlock(nn.Module):
    """Pixel-region attention: every pixel attends over the class regions, fused with itself.

    ``context = out_project(softmax_k(q_i . k_k / sqrt(D)) v_k)``, with queries ``q`` the
    pixels (two 1x1 conv-norm-act units to ``inter_channels = D``), keys ``k`` the
    regions (the same), values ``v`` the regions (one unit to ``D``), ``out_project``
    one unit back to ``channels``; then ``bottleneck([context, x])``, a 1x1
    conv-norm-act from ``2 * channels`` to ``channels``. mmseg's
    ``ObjectAttentionBlock`` with ``scale=1`` (every release): its ``scale > 1``
    max-pools the queries and then fails in mmseg's own forward, so it is not offered.

    The attention is a :class:`~attnblocks.layers.SelfAttentionBlock` (``attention``)
    on the position backends: energies and softmax in at least float32, also under
    ``torch.autocast``. State dict: ``attention.query_project.{0,1}.*``,
    ``attention.key_project.{0,1}.*``, ``attention.value_project.*``,
    ``attention.out_project.*`` and ``bottleneck.*`` (each ``conv.weight`` and
    ``norm.*``), mmseg's ``object_context_block.*`` with ``bn`` called ``norm``.

    Shapes: ``x (B, C, H, W)`` and ``regions (B, C, K, 1)`` (from :class:`SpatialGather`)
    -> ``(B, C, H, W)``, any ``B, H, W, K``.

    Args:
        channels: channels ``C`` of the pixel features and of the regions.
        inter_channels: width ``D`` of queries, keys and values (mmseg's ``ocr_channels``:
            256 in every release).
        norm_layer: the norm of the conv-norm-act units.
        act_layer: the activation of the conv-norm-act units.
        backend: position-attention backend, one of
            :data:`attnblocks.functional.POSITION_BACKENDS`.
        chunk_size: query positions per chunk of the ``"chunked"`` backend (None: its choice).
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        channels: int,
        inter_channels: int = 256,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        backend: str = "auto",
        chunk_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("channels", channels)
        check_positive_int("inter_channels", inter_channels)
        dd = {"device": device, "dtype": dtype}
        layers = {"norm_layer": norm_layer, "act_layer": act_layer, **dd}
        self.channels = channels
        self.inter_channels = inter_channels
        self.attention = SelfAttentionBlock(
            channels, channels, inter_channels, channels, key_query_num_convs=2,
            value_out_num_convs=1, key_query_norm=True, value_out_norm=True, matmul_norm=True,
            with_out=True, backend=backend, chunk_size=chunk_size, **layers,
        )  # fmt: skip
        self.bottleneck = ConvNormAct(2 * channels, channels, 1, **layers)

    def _check_inputs(self, x: Tensor, regions: Tensor) -> None:
        name = type(self).__name__
        check_feature_map(x, self.channels, name)
        check_feature_map(regions, self.channels, f"{name} regions")
        if regions.shape[0] != x.shape[0]:
            raise ValueError(
                f"{name} needs pixels and regions of one batch size, got x {tuple(x.shape)} "
                f"and regions {tuple(regions.shape)}"
            )

    def forward(self, x: Tensor, regions: Tensor) -> Tensor:
        """The object-contextual features of ``x``.

        Args:
            x: ``(B, C, H, W)`` pixel features.
            regions: ``(B, C, K, 1)`` region representations (:class:`SpatialGather`).

        Returns:
            ``(B, C, H, W)``.
        """
        self._check_inputs(x, regions)
        context = self.attention(x, regions)  # (B, C, H, W): pixels attending over regions
        return self.bottleneck(torch.cat([context, x], dim=1))  # context first, as mmseg's

    @torch.no_grad()
    def region_attention(self, x: Tensor, regions: Tensor) -> Tensor:
        """Each pixel's attention weights over the ``K`` regions, as ``K`` maps.

        Args:
            x: ``(B, C, H, W)`` pixel features.
            regions: ``(B, C, K, 1)`` region representations.

        Returns:
            ``(B, K, H, W)`` weights in at least float32, summing to 1 over ``K`` at
            every pixel.
        """
        self._check_inputs(x, regions)
        height, width = x.shape[-2:]
        rows, cols = (torch.arange(n, device=x.device) for n in (height, width))
        points = torch.cartesian_prod(rows, cols)  # every pixel, row-major: (H * W, 2)
        weights = self.attention.attention_map(x, points, regions)  # (B, H * W, K, 1)
        return rearrange(weights, "b (h w) k 1 -> b k h w", h=height, w=width)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inter_channels={self.inter_channels}"

"""mmseg's FCN head with an attention block between its convolutions (NLHead, GCHead, DNLHead).

mmsegmentation builds the heads of NLNet, GCNet and DNLNet as one ``FCNHead`` (two 3x3
conv-norm-act units, the input concatenated before a third, a classifier) with the
model's block applied between the first two; CCNet's ``CCHead`` has the same shape
(:class:`~attnblocks.models.CCNetHead` is this head with a criss-cross block).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._validation import check_feature_map, default_inter_channels
from ..layers import ConvNormAct
from ..layers.conv_norm_act import LayerFactory
from .danet_head import _classifier

#: Builds the attention block for ``inter_channels`` as ``factory(channels, device=, dtype=)``.
AttentionFactory = Callable[..., nn.Module]


class FCNAttentionHead(nn.Module):
    """An attention block between two 3x3 convs, fused with the head's input, classified.

    ::

        x -> attention_in (3x3 conv-norm-act) -> attention (the block) -> attention_out
          (3x3 conv-norm-act) -> [x, that] (concatenated) -> fuse (3x3 conv-norm-act)
          -> classifier (dropout, 1x1 conv) -> logits

    The layout of mmsegmentation's ``FCNHead`` with ``num_convs=2, concat_input=True``
    (``convs.0``, the block, ``convs.1``, ``conv_cat``, ``conv_seg``), which its
    ``NLHead``, ``GCHead`` and ``DNLHead`` are.

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, num_classes, H, W)`` logits.

    Args:
        in_channels: channels of the backbone features.
        num_classes: number of classes.
        attention: builds the block, called as ``attention(inter_channels, device=...,
            dtype=...)`` (timm's ``attn_layer`` protocol), e.g.
            ``functools.partial(NonLocal2d, norm_layer=nn.BatchNorm2d)``.
        inter_channels: channels around the block (default ``in_channels // 4``: 512 on
            a ResNet-50/101, as mmseg's ``channels=512``).
        dropout: channel dropout before the classifier (0.1 in mmseg).
        norm_layer: normalisation of the head convolutions.
        act_layer: activation of the head convolutions.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        attention: AttentionFactory,
        inter_channels: int | None = None,
        dropout: float = 0.1,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        layers = {"norm_layer": norm_layer, "act_layer": act_layer, **dd}
        self.inter_channels = inter = default_inter_channels(in_channels, inter_channels)
        self.in_channels = in_channels
        self.attention_in = ConvNormAct(in_channels, inter, 3, **layers)
        self.attention = attention(inter, **dd)
        self.attention_out = ConvNormAct(inter, inter, 3, **layers)
        self.fuse = ConvNormAct(in_channels + inter, inter, 3, **layers)
        self.classifier = _classifier(inter, num_classes, dropout, **dd)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits for features ``x`` of shape ``(B, in_channels, H, W)``."""
        check_feature_map(x, self.in_channels, type(self).__name__)
        features = self.attention_out(self.attention(self.attention_in(x)))
        features = self.fuse(torch.cat([x, features], dim=1))  # the input first, as mmseg's
        return self.classifier(features)

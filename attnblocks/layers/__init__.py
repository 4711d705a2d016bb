"""Attention blocks for CNN feature maps."""

from .cam import CAM
from .conv_norm_act import ConvNormAct
from .criss_cross import CrissCrossAttention
from .dual_attention import DualAttention, DualAttentionOutput
from .pam import PAM

__all__ = [
    "CAM",
    "PAM",
    "ConvNormAct",
    "CrissCrossAttention",
    "DualAttention",
    "DualAttentionOutput",
]

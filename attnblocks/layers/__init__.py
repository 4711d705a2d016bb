"""Attention blocks for CNN feature maps."""

from .cam import CAM
from .context import ContextBlock
from .conv_norm_act import ConvNormAct
from .criss_cross import CrissCrossAttention
from .disentangled_non_local import DisentangledNonLocal2d
from .dual_attention import DualAttention, DualAttentionOutput
from .non_local import NonLocal2d
from .pam import PAM
from .pointwise_spatial_attention import PointwiseSpatialAttention

__all__ = [
    "CAM",
    "PAM",
    "ContextBlock",
    "ConvNormAct",
    "CrissCrossAttention",
    "DisentangledNonLocal2d",
    "DualAttention",
    "DualAttentionOutput",
    "NonLocal2d",
    "PointwiseSpatialAttention",
]

"""Attention blocks for CNN feature maps."""

from .cam import CAM
from .context import ContextBlock
from .conv_norm_act import ConvNormAct
from .criss_cross import CrissCrossAttention
from .dual_attention import DualAttention, DualAttentionOutput
from .non_local import NonLocal2d
from .object_context import ObjectContextBlock, SpatialGather
from .pam import PAM
from .self_attention_block import SelfAttentionBlock

__all__ = [
    "CAM",
    "PAM",
    "ContextBlock",
    "ConvNormAct",
    "CrissCrossAttention",
    "DualAttention",
    "DualAttentionOutput",
    "NonLocal2d",
    "ObjectContextBlock",
    "SelfAttentionBlock",
    "SpatialGather",
]

"""Attention blocks for CNN feature maps."""

from .asymmetric_non_local import (
    AsymmetricFusionNonLocal,
    AsymmetricPyramidNonLocal,
    PyramidPooling,
)
from .cam import CAM
from .context import ContextBlock
from .conv_norm_act import ConvNormAct
from .criss_cross import CrissCrossAttention
from .disentangled_non_local import DisentangledNonLocal2d
from .dual_attention import DualAttention, DualAttentionOutput
from .expectation_maximization import ExpectationMaximizationAttention
from .interlaced_sparse_attention import InterlacedSparseSelfAttention, ISAAttentionMaps
from .non_local import NonLocal2d
from .object_context import ObjectContextBlock, SpatialGather
from .pam import PAM
from .pointwise_spatial_attention import PointwiseSpatialAttention
from .self_attention_block import SelfAttentionBlock

__all__ = [
    "CAM",
    "PAM",
    "AsymmetricFusionNonLocal",
    "AsymmetricPyramidNonLocal",
    "ContextBlock",
    "ConvNormAct",
    "CrissCrossAttention",
    "DisentangledNonLocal2d",
    "DualAttention",
    "DualAttentionOutput",
    "ExpectationMaximizationAttention",
    "ISAAttentionMaps",
    "InterlacedSparseSelfAttention",
    "NonLocal2d",
    "ObjectContextBlock",
    "PointwiseSpatialAttention",
    "PyramidPooling",
    "SelfAttentionBlock",
    "SpatialGather",
]

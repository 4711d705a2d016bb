"""attnblocks: pluggable attention blocks for CNNs.

DANet's PAM and CAM, CCNet's criss-cross attention, the non-local block, GCNet's
global context block and OCRNet's object-contextual blocks.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983
"""

from .layers import (
    CAM,
    PAM,
    AsymmetricFusionNonLocal,
    AsymmetricPyramidNonLocal,
    ContextBlock,
    CrissCrossAttention,
    DualAttention,
    DualAttentionOutput,
    ExpectationMaximizationAttention,
    InterlacedSparseSelfAttention,
    NonLocal2d,
    ObjectContextBlock,
    SelfAttentionBlock,
    SpatialGather,
)

__version__ = "0.1.0"

__all__ = [
    "CAM",
    "PAM",
    "AsymmetricFusionNonLocal",
    "AsymmetricPyramidNonLocal",
    "ContextBlock",
    "CrissCrossAttention",
    "DualAttention",
    "DualAttentionOutput",
    "ExpectationMaximizationAttention",
    "InterlacedSparseSelfAttention",
    "NonLocal2d",
    "ObjectContextBlock",
    "SelfAttentionBlock",
    "SpatialGather",
    "__version__",
]

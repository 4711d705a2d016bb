"""attnblocks: pluggable attention blocks for CNNs.

DANet's PAM and CAM, CCNet's criss-cross attention, the non-local block, GCNet's
global context block, DNLNet's disentangled non-local block, PSANet's point-wise spatial
attention, ANN's asymmetric non-local blocks, ISANet's interlaced sparse attention,
EMANet's expectation-maximization attention and OCRNet's object-contextual blocks.

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
    DisentangledNonLocal2d,
    DualAttention,
    DualAttentionOutput,
    ExpectationMaximizationAttention,
    InterlacedSparseSelfAttention,
    NonLocal2d,
    ObjectContextBlock,
    PointwiseSpatialAttention,
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
    "DisentangledNonLocal2d",
    "DualAttention",
    "DualAttentionOutput",
    "ExpectationMaximizationAttention",
    "InterlacedSparseSelfAttention",
    "NonLocal2d",
    "ObjectContextBlock",
    "PointwiseSpatialAttention",
    "SelfAttentionBlock",
    "SpatialGather",
    "__version__",
]

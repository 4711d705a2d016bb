"""attnblocks: pluggable attention blocks for CNNs.

DANet's PAM and CAM, CCNet's criss-cross attention, the non-local block, GCNet's
global context block, DNLNet's disentangled non-local block and PSANet's point-wise
spatial attention.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983
"""

from .layers import (
    CAM,
    PAM,
    ContextBlock,
    CrissCrossAttention,
    DisentangledNonLocal2d,
    DualAttention,
    DualAttentionOutput,
    NonLocal2d,
    PointwiseSpatialAttention,
)

__version__ = "0.1.0"

__all__ = [
    "CAM",
    "PAM",
    "ContextBlock",
    "CrissCrossAttention",
    "DisentangledNonLocal2d",
    "DualAttention",
    "DualAttentionOutput",
    "NonLocal2d",
    "PointwiseSpatialAttention",
    "__version__",
]

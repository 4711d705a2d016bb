"""attnblocks: pluggable attention blocks for CNNs, starting with DANet's PAM and CAM.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983
"""

from .layers import CAM, PAM, CrissCrossAttention, DualAttention, DualAttentionOutput

__version__ = "0.1.0"

__all__ = [
    "CAM",
    "PAM",
    "CrissCrossAttention",
    "DualAttention",
    "DualAttentionOutput",
    "__version__",
]

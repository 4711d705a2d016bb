"""Segmentation models built from the attention blocks, on one shared scaffold (``base.py``)."""

from ._hub import HUB_AVAILABLE
from .annnet import ANNNet, ANNNetHead
from .backbone import apply_multi_grid, create_backbone
from .base import MMSEG_MODELS, SegmentationModel, main_logits
from .ccnet import CCNet, CCNetHead
from .danet import DANet
from .danet_head import DANetHead, DANetOutput
from .dnlnet import DNLNet
from .emanet import EMANet, EMANetHead
from .fcn_attention_head import FCNAttentionHead
from .gcnet import GCNet
from .hrnet import use_bilinear_fusion
from .isanet import ISANet, ISANetHead
from .nlnet import NLNet
from .ocrnet import OCRNet, OCRNetHead, OCRNetOutput
from .psanet import PSANet, PSANetHead
from .registry import from_mmseg, mmseg_model_class

__all__ = [
    "HUB_AVAILABLE",
    "MMSEG_MODELS",
    "ANNNet",
    "ANNNetHead",
    "CCNet",
    "CCNetHead",
    "DANet",
    "DANetHead",
    "DANetOutput",
    "DNLNet",
    "EMANet",
    "EMANetHead",
    "FCNAttentionHead",
    "GCNet",
    "ISANet",
    "ISANetHead",
    "NLNet",
    "OCRNet",
    "OCRNetHead",
    "OCRNetOutput",
    "PSANet",
    "PSANetHead",
    "SegmentationModel",
    "apply_multi_grid",
    "create_backbone",
    "from_mmseg",
    "main_logits",
    "mmseg_model_class",
    "use_bilinear_fusion",
]

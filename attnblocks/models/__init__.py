"""Segmentation models built from the attention blocks, on one shared scaffold (``base.py``)."""

from ._hub import HUB_AVAILABLE
from .backbone import apply_multi_grid, create_backbone
from .base import SegmentationModel, main_logits
from .ccnet import CCNet, CCNetHead
from .danet import DANet
from .danet_head import DANetHead, DANetOutput

__all__ = [
    "HUB_AVAILABLE",
    "CCNet",
    "CCNetHead",
    "DANet",
    "DANetHead",
    "DANetOutput",
    "SegmentationModel",
    "apply_multi_grid",
    "create_backbone",
    "main_logits",
]

"""Segmentation models built from the attention blocks."""

from .backbone import apply_multi_grid, create_backbone
from .danet import DANet
from .danet_head import DANetHead, DANetOutput

__all__ = ["DANet", "DANetHead", "DANetOutput", "apply_multi_grid", "create_backbone"]

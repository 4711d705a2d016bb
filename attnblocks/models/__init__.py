"""Segmentation models built from the attention blocks."""

from .danet_head import DANetHead, DANetOutput

__all__ = ["DANetHead", "DANetOutput"]

"""What travels with pretrained weights: preprocessing, class names, palettes, download table.

- :class:`PretrainedConfig`: normalisation, class names, palette and test-time
  resizing / sliding window of a model (``config.py``).
- Class names and palettes of Cityscapes, ADE20K and PASCAL VOC (``datasets.py``).
- :data:`MMSEG_CHECKPOINTS`: mmsegmentation's released DANet and CCNet checkpoints, and
  :func:`load_mmseg_checkpoint` to fetch one with its hash checked (``mmseg_checkpoints.py``).
"""

from .config import IMAGENET_MEAN, IMAGENET_STD, PretrainedConfig, PretrainedConfigLike
from .datasets import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    DATASETS,
    VOC_CLASSES,
    DatasetInfo,
    bit_palette,
    dataset_for_num_classes,
)
from .image import ImageLike, read_rgb
from .mmseg_checkpoints import (
    MMSEG_CHECKPOINTS,
    MMSEG_DOWNLOAD_ROOT,
    MMSegCheckpoint,
    find_mmseg_checkpoint,
    load_mmseg_checkpoint,
    mmseg_pretrained_config,
)

__all__ = [
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MMSEG_CHECKPOINTS",
    "MMSEG_DOWNLOAD_ROOT",
    "VOC_CLASSES",
    "DatasetInfo",
    "ImageLike",
    "MMSegCheckpoint",
    "PretrainedConfig",
    "PretrainedConfigLike",
    "bit_palette",
    "dataset_for_num_classes",
    "find_mmseg_checkpoint",
    "load_mmseg_checkpoint",
    "mmseg_pretrained_config",
    "read_rgb",
]

"""What travels with pretrained weights: preprocessing, class names, palettes, download table.

- :class:`PretrainedConfig`: normalisation, class names, palette and test-time
  resizing / sliding window of a model (``config.py``).
- Class names and palettes of Cityscapes, ADE20K and PASCAL VOC, mmseg's (``datasets.py``).
- :func:`read_rgb`: an image file, PIL image or array as mmseg's test pipeline reads it
  (``image.py``); :func:`resize_uint8` and :func:`rescale_size`: its test resize, OpenCV's
  bilinear arithmetic on uint8 and mmcv's output sizes (``resize.py``).
- :data:`MMSEG_CHECKPOINTS`: mmsegmentation's released checkpoints of attention models,
  :func:`load_mmseg_checkpoint` to fetch one with its hash checked, and the test setup
  of a checkpoint from its meta and release (``mmseg_checkpoints.py``).
"""

from .config import IMAGENET_MEAN, IMAGENET_STD, PretrainedConfig, PretrainedConfigLike
from .datasets import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    DATASETS,
    VOC_CLASSES,
    VOC_PALETTE,
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
    mmseg_align_corners,
    mmseg_pretrained_config,
)
from .resize import rescale_size, resize_uint8, scale_size

__all__ = [
    "ADE20K_CLASSES",
    "ADE20K_PALETTE",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MMSEG_CHECKPOINTS",
    "MMSEG_DOWNLOAD_ROOT",
    "VOC_CLASSES",
    "VOC_PALETTE",
    "DatasetInfo",
    "ImageLike",
    "MMSegCheckpoint",
    "PretrainedConfig",
    "PretrainedConfigLike",
    "bit_palette",
    "dataset_for_num_classes",
    "find_mmseg_checkpoint",
    "load_mmseg_checkpoint",
    "mmseg_align_corners",
    "mmseg_pretrained_config",
    "read_rgb",
    "rescale_size",
    "resize_uint8",
    "scale_size",
]

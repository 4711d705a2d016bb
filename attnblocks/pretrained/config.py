"""The preprocessing and labels that travel with a model's weights.

A segmentation model labels a new image correctly only when the image is prepared as
its training images were (normalisation, scale) and its labels are read with the
training set's class names. :class:`PretrainedConfig` holds these; every
:class:`~attnblocks.models.SegmentationModel` carries one, writes it into the
``config.json`` of ``save_pretrained`` and uses it in ``predict_image``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Union

import torch
from torch import Tensor

from .datasets import DATASETS, Colour, bit_palette
from .resize import rescale_size

# ImageNet statistics on the 0-255 RGB scale, as mmseg's data_preprocessor and timm use them
IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)


def _pair_or_none(name: str, value: Any) -> tuple[int, int] | None:
    """``value`` as an ``(h, w)`` pair of positive ints (an int ``n`` is ``(n, n)``), or None."""
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                 for v in pair):  # fmt: skip
        raise ValueError(f"{name} must be None or a pair of positive ints, got {value!r}")
    return pair[0], pair[1]


@dataclass(frozen=True)
class PretrainedConfig:
    """What a model needs besides its weights to label a new image as it was trained to.

    Lists (from JSON) are accepted and stored as tuples.

    Args:
        class_names: one name per class, indexed by label.
        palette: one RGB colour (0-255 each) per class, for pictures.
        mean: per-channel mean subtracted from the 0-255 RGB pixels.
        std: per-channel divisor applied after the mean.
        dataset: the dataset the classes come from (``"cityscapes"``, ``"ade20k"``,
            ``"voc"``), or None.
        image_scale: ``(long, short)`` edge bounds: a test image is resized, keeping its
            aspect ratio, to the largest size within both (mmseg's test
            ``Resize(scale, keep_ratio=True)``; an image inside them is enlarged); None
            keeps every image's size.
        crop_size: sliding-window size ``(h, w)`` for ``predict_image``; None predicts
            the whole (resized) image at once.
        stride: step between windows ``(h, w)``; None: 2/3 of the crop.

    Raises:
        ValueError: if the palette and the class names differ in length, a colour is not
            three values in 0..255, or mean and std are not positive per-channel values
            of equal length.
    """

    class_names: tuple[str, ...]
    palette: tuple[Colour, ...]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    dataset: str | None = None
    image_scale: tuple[int, int] | None = None
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # the dataclass is frozen; normalise once, here
        set_field(self, "class_names", tuple(str(name) for name in self.class_names))
        set_field(self, "palette", tuple(tuple(int(c) for c in colour) for colour in self.palette))
        set_field(self, "mean", tuple(float(m) for m in self.mean))
        set_field(self, "std", tuple(float(s) for s in self.std))
        for name in ("image_scale", "crop_size", "stride"):
            set_field(self, name, _pair_or_none(name, getattr(self, name)))
        if not self.class_names:
            raise ValueError("class_names must name at least one class, got none")
        if len(self.palette) != len(self.class_names):
            raise ValueError(
                f"palette must hold one colour per class: {len(self.class_names)} classes, "
                f"got {len(self.palette)} colours"
            )
        bad = [c for c in self.palette if len(c) != 3 or not all(0 <= v <= 255 for v in c)]
        if bad:
            raise ValueError(f"palette colours must be (R, G, B) in 0..255, got {bad[:3]}")
        if len(self.mean) != len(self.std) or not self.mean or min(self.std) <= 0:
            raise ValueError(
                f"mean and std must be per-channel values of equal length, std positive; "
                f"got mean {self.mean}, std {self.std}"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @classmethod
    def for_dataset(cls, name: str, **changes: Any) -> PretrainedConfig:
        """The config of a model trained on dataset ``name`` of :data:`DATASETS`.

        Args:
            name: ``"cityscapes"``, ``"ade20k"`` or ``"voc"``.
            **changes: fields to set differently (``crop_size=(769, 769)``...).
        """
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
        info = DATASETS[name]
        settings: dict[str, Any] = dict(
            class_names=info.classes, palette=info.palette, dataset=name,
            image_scale=info.image_scale,
        )  # fmt: skip
        return cls(**{**settings, **changes})

    @classmethod
    def generic(cls, num_classes: int) -> PretrainedConfig:
        """Classes named ``"class 0"``, ``"class 1"``..., VOC's colour map, ImageNet statistics."""
        names = tuple(f"class {index}" for index in range(num_classes))
        return cls(class_names=names, palette=bit_palette(num_classes))

    @classmethod
    def resolve(cls, value: PretrainedConfigLike | None, num_classes: int) -> PretrainedConfig:
        """``value`` as a config for ``num_classes`` classes (None: :meth:`generic`).

        Args:
            value: a config, its :meth:`to_dict` form (as read from ``config.json``), or None.
            num_classes: the model's number of classes, which the config must match.

        Raises:
            ValueError: if the config names another number of classes, or a dict holds
                unknown fields.
        """
        if value is None:
            return cls.generic(num_classes)
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {f.name for f in fields(cls)})
            if unknown:
                raise ValueError(f"unknown PretrainedConfig fields {unknown}")
            value = cls(**value)
        if not isinstance(value, cls):
            raise TypeError(f"expected a PretrainedConfig, a dict or None, got {type(value)}")
        if value.num_classes != num_classes:
            raise ValueError(
                f"the pretrained config names {value.num_classes} classes, the model has "
                f"num_classes={num_classes}"
            )
        return value

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain Python values (tuples), for ``config.json``."""
        return asdict(self)

    def normalize(self, pixels: Tensor) -> Tensor:
        """``(..., C, H, W)`` RGB pixels on the 0-255 scale to the model's float32 input."""
        shape = (len(self.mean), 1, 1)
        mean = torch.tensor(self.mean, device=pixels.device).view(shape)
        std = torch.tensor(self.std, device=pixels.device).view(shape)
        return (pixels.float() - mean) / std

    def rescale_factor(self, height: int, width: int) -> float:
        """The factor :attr:`image_scale` resizes an ``height x width`` image by (1.0 without)."""
        if self.image_scale is None:
            return 1.0
        long_edge, short_edge = max(self.image_scale), min(self.image_scale)
        return min(long_edge / max(height, width), short_edge / min(height, width))

    def test_size(self, height: int, width: int) -> tuple[int, int]:
        """The size :attr:`image_scale` resizes an ``height x width`` image to, rounded as mmcv.

        Args:
            height: the image height.
            width: the image width.
        """
        if self.image_scale is None:
            return height, width
        return rescale_size(height, width, self.image_scale)

    def colorize(self, labels: Tensor) -> Tensor:
        """``(..., H, W)`` labels to ``(..., H, W, 3)`` uint8 RGB; labels out of range are black.

        Args:
            labels: integer class labels (255 or another void value allowed).
        """
        colours = torch.tensor((*self.palette, (0, 0, 0)), dtype=torch.uint8)
        labels = labels.long().cpu()
        void = (labels < 0) | (labels >= self.num_classes)
        return colours[torch.where(void, self.num_classes, labels)]


PretrainedConfigLike = Union[PretrainedConfig, Mapping[str, Any]]

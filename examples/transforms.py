"""Training augmentation of the paper's recipe and evaluation preprocessing.

Augmentation draws from a generator seeded by ``(seed, epoch, index)``, so a sample
is augmented the same way in every run, whatever the number of data workers, and a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(image: Tensor) -> Tensor:
    """``uint8`` ``(3, H, W)`` RGB (or a batch of them) to ImageNet-normalised float32."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1) * 255
    return (image.float() - mean) / std


def denormalize(image: Tensor) -> Tensor:
    """Inverse of :func:`normalize`, as float RGB in ``[0, 1]`` (for pictures)."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0, 1)


class TrainAugment:
    """Random scale, random crop (padding with the ignore label), horizontal flip, normalise.

    Args:
        crop_size: ``(height, width)`` of the training crops.
        scale_range: range of the random rescaling factor (the paper: 0.75 to 2.0).
        flip: flip left-right with probability 1/2.
        ignore_index: label given to padding.
    """

    def __init__(
        self,
        crop_size: tuple[int, int],
        scale_range: Sequence[float] = (0.75, 2.0),
        flip: bool = True,
        ignore_index: int = 255,
    ) -> None:
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be 0 < low <= high, got {tuple(scale_range)}")
        self.crop_size, self.scale_range = tuple(crop_size), (low, high)
        self.flip, self.ignore_index = flip, ignore_index

    def __call__(
        self, image: Tensor, label: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        image = normalize(image)
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand((), generator=generator).item()
        if scale != 1.0:
            height, width = image.shape[-2:]
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            # nearest-exact samples at pixel centres, as the bilinear image does (PIL NEAREST);
            # "nearest" floors and would shift labels up-left of their pixels by ~half a pixel.
            label = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")
            label = label[0, 0].long()
        crop_h, crop_w = self.crop_size
        pad_h, pad_w = max(crop_h - image.shape[1], 0), max(crop_w - image.shape[2], 0)
        if pad_h or pad_w:  # zeros are the mean colour after normalisation; padding is not scored
            image = F.pad(image, (0, pad_w, 0, pad_h))
            label = F.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)
        top = torch.randint(0, image.shape[1] - crop_h + 1, (), generator=generator).item()
        left = torch.randint(0, image.shape[2] - crop_w + 1, (), generator=generator).item()
        image = image[:, top : top + crop_h, left : left + crop_w]
        label = label[top : top + crop_h, left : left + crop_w]
        if self.flip and torch.rand((), generator=generator).item() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image.contiguous(), label.contiguous()


class SeededAugmentation(Dataset):
    """A dataset whose items are augmented with a generator seeded by ``(seed, epoch, index)``.

    Args:
        dataset: yields ``(uint8 image, label)``.
        augment: a :class:`TrainAugment` (called as ``augment(image, label, generator)``).
        seed: the run's seed.
    """

    def __init__(self, dataset: Dataset, augment: TrainAugment, seed: int) -> None:
        self.dataset, self.augment, self.seed, self.epoch = dataset, augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Use the augmentations of ``epoch``; call before iterating, like DistributedSampler."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.dataset[index]
        # SeedSequence mixes the three numbers into one well-spread seed, with no collisions.
        seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
        return self.augment(image, label, torch.Generator().manual_seed(int(seed)))


class EvalTransform:
    """Normalisation only: evaluation sees the whole image at its own size."""

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        return normalize(image), label

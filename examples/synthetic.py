"""A synthetic scene-parsing task in which long-range context decides some labels.

The paper's introduction motivates DANet with pixels that look alike locally but
belong to different classes, which only the context of the whole scene tells apart.
This dataset builds that confusion on purpose:

- ``background``, ``road``, ``building``, ``tree`` and ``lamp`` have their own colour
  and texture: a small receptive field recognises them.
- ``car`` and ``truck`` are drawn IDENTICALLY (striped ellipses). Which of the two a
  scene holds is told only by its ``lamp``, a small square somewhere else in the image:
  red lamp -> the ellipses are cars, blue lamp -> trucks. A model must relate pixels
  far apart to label them.

Samples are generated on the fly from ``(seed, index)``: deterministic, no files.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

CLASSES = ("background", "road", "building", "tree", "car", "truck", "lamp")
#: Classes whose pixels look the same locally; only the lamp elsewhere tells them apart.
CONTEXT_CLASSES = ("car", "truck")
IGNORE_INDEX = 255

_BACKGROUND, _ROAD, _BUILDING, _TREE, _CAR, _TRUCK, _LAMP = range(len(CLASSES))
_LAMP_COLOURS = {_CAR: (230, 30, 30), _TRUCK: (30, 60, 230)}  # red lamp: cars; blue: trucks
#: Vehicles keep at least this fraction of the image diagonal from the lamp (centre to centre).
MIN_CUE_DISTANCE = 0.4


class SyntheticScenes(Dataset):
    """Generated street-like scenes, ``(image, label)`` pairs of a fixed size.

    Args:
        length: number of samples.
        size: ``(height, width)`` of every image.
        seed: generator seed; the same ``(seed, index)`` always gives the same sample.
        transform: optional callable applied to ``(image, label)``.
    """

    classes = CLASSES
    num_classes = len(CLASSES)
    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        length: int,
        size: tuple[int, int] = (128, 128),
        seed: int = 0,
        transform=None,
    ) -> None:
        if length < 1:
            raise ValueError(f"length must be positive, got {length}")
        if min(size) < 32:
            raise ValueError(f"size must be at least 32 x 32 to hold a scene, got {size}")
        self.length, self.size, self.seed, self.transform = length, tuple(size), seed, transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        image, label = render_scene(np.random.default_rng([self.seed, index]), self.size)
        image_t = torch.from_numpy(image).permute(2, 0, 1).contiguous()  # (3, H, W) uint8
        label_t = torch.from_numpy(label.astype(np.int64))
        if self.transform is not None:
            image_t, label_t = self.transform(image_t, label_t)
        return image_t, label_t


def render_scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One scene: an ``(H, W, 3)`` uint8 image and its ``(H, W)`` uint8 label map.

    Args:
        rng: the random generator that decides everything in the scene.
        size: ``(height, width)``.
    """
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width]
    grey = rng.uniform(90, 170)
    image = grey + rng.normal(0, 6, (height, width, 1)) * np.ones(3)  # background: noisy grey
    label = np.full((height, width), _BACKGROUND, dtype=np.uint8)

    def paint(mask: np.ndarray, cls: int, colour: np.ndarray) -> None:
        image[mask] = colour[mask] if colour.ndim == 3 else colour
        label[mask] = cls

    # Road: a band along the bottom with horizontal dashes.
    road_top = height - int(rng.uniform(0.18, 0.3) * height)
    road = rows >= road_top
    road_colour = np.stack([np.full((height, width), 60.0)] * 3, axis=-1)
    road_colour[(rows % 6 == 0) & (cols % 10 < 5)] = 200
    paint(road, _ROAD, road_colour)

    # Buildings: one or two brown rectangles with a window grid, above the road.
    for _ in range(rng.integers(1, 3)):
        h, w = rng.integers(height // 5, height // 3), rng.integers(width // 6, width // 3)
        top, left = rng.integers(0, max(road_top - h, 1)), rng.integers(0, width - w)
        box = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        colour = np.broadcast_to(np.array([150.0, 90, 50]), (height, width, 3)).copy()
        colour[((rows - top) % 5 < 2) & ((cols - left) % 5 < 2)] = (240, 230, 140)
        paint(box, _BUILDING, colour)

    # Trees: one or two green disks with a speckled texture.
    for _ in range(rng.integers(1, 3)):
        radius = rng.uniform(0.08, 0.14) * min(height, width)
        cy, cx = rng.uniform(radius, road_top), rng.uniform(radius, width - radius)
        disk = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
        colour = np.stack(
            [rng.uniform(20, 60, (height, width)), rng.uniform(110, 190, (height, width)),
             rng.uniform(20, 60, (height, width))], axis=-1,
        )  # fmt: skip
        paint(disk, _TREE, colour)

    # The lamp's place is chosen first, so that the vehicles can keep away from it.
    side = max(6, min(height, width) // 5)
    lamp_top, lamp_left = rng.integers(0, road_top - side), rng.integers(0, width - side)
    lamp_centre = np.array([lamp_top + side / 2, lamp_left + side / 2])
    min_distance = MIN_CUE_DISTANCE * np.hypot(height, width)

    # Vehicles: striped ellipses, drawn the same for cars and trucks, far from the lamp.
    vehicle = _CAR if rng.random() < 0.5 else _TRUCK
    for _ in range(rng.integers(1, 4)):
        ry, rx = rng.uniform(0.07, 0.12) * height, rng.uniform(0.1, 0.18) * width
        for _attempt in range(100):
            centre = np.array([rng.uniform(ry, height - ry), rng.uniform(rx, width - rx)])
            if np.linalg.norm(centre - lamp_centre) >= min_distance:
                break
        ellipse = ((rows - centre[0]) / ry) ** 2 + ((cols - centre[1]) / rx) ** 2 <= 1
        stripes = ((rows + cols) // 3) % 2 == 0
        colour = np.where(stripes[..., None], 235.0, 25.0) * np.ones(3)
        paint(ellipse, vehicle, colour)

    # The lamp, painted last: a square whose colour names the vehicles.
    square = (
        (rows >= lamp_top)
        & (rows < lamp_top + side)
        & (cols >= lamp_left)
        & (cols < lamp_left + side)
    )
    paint(square, _LAMP, np.array(_LAMP_COLOURS[vehicle], dtype=float))

    return np.clip(image, 0, 255).astype(np.uint8), label

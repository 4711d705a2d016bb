"""The synthetic scenes: deterministic, and built so that only context separates car from truck."""

import numpy as np
import pytest
import torch

from examples.synthetic import CLASSES, CONTEXT_CLASSES, SyntheticScenes

CAR, TRUCK, LAMP = (CLASSES.index(name) for name in ("car", "truck", "lamp"))


def test_deterministic_per_seed_and_index():
    first, again, other = (
        SyntheticScenes(5, seed=3),
        SyntheticScenes(5, seed=3),
        SyntheticScenes(5, seed=4),
    )
    for index in range(5):
        assert torch.equal(first[index][0], again[index][0])
        assert torch.equal(first[index][1], again[index][1])
    assert not torch.equal(first[0][0], other[0][0])


def test_items_are_uint8_images_and_int64_labels():
    image, label = SyntheticScenes(1, size=(48, 80))[0]
    assert image.shape == (3, 48, 80) and image.dtype == torch.uint8
    assert label.shape == (48, 80) and label.dtype == torch.int64
    assert set(label.unique().tolist()) <= set(range(len(CLASSES)))


def test_vehicles_look_alike_and_the_lamp_tells_them_apart():
    scenes = SyntheticScenes(40, seed=0)
    seen = {CAR: 0, TRUCK: 0}
    for image, label in scenes:
        vehicles = [cls for cls in (CAR, TRUCK) if (label == cls).any()]
        assert len(vehicles) <= 1  # one kind of vehicle per scene
        if not vehicles:
            continue
        vehicle = vehicles[0]
        seen[vehicle] += 1
        # Both classes are painted with the same two grey levels...
        pixels = image[:, label == vehicle]
        assert set(pixels.unique().tolist()) <= {25, 235}
        # ...and only the lamp's colour (red for cars, blue for trucks) says which one it is.
        lamp = image[:, label == LAMP].float().mean(dim=1)
        assert (lamp[0] > lamp[2]) == (vehicle == CAR)
    assert seen[CAR] > 5 and seen[TRUCK] > 5
    assert CONTEXT_CLASSES == ("car", "truck")


def test_bad_arguments():
    with pytest.raises(ValueError, match="length must be positive"):
        SyntheticScenes(0)
    with pytest.raises(ValueError, match="at least 32 x 32"):
        SyntheticScenes(1, size=(16, 64))
    with pytest.raises(IndexError, match="index 3 out of range for 3 samples"):
        SyntheticScenes(3)[3]
    assert np.issubdtype(np.uint8, np.integer)

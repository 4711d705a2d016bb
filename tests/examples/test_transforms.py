"""Training augmentation: deterministic per seed, labels follow the image, padding is ignored."""

import pytest
import torch

from examples.transforms import SeededAugmentation, TrainAugment, denormalize, normalize


def pair(height=20, width=30):
    image = (
        torch.arange(3 * height * width).reshape(3, height, width).remainder(256).to(torch.uint8)
    )
    label = torch.arange(height * width).reshape(height, width) % 7
    return image, label


def test_same_generator_seed_same_result():
    augment = TrainAugment((16, 16), scale_range=(0.75, 2.0))
    image, label = pair()
    a = augment(image, label, torch.Generator().manual_seed(5))
    b = augment(image, label, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 16, 16) and a[1].shape == (16, 16)


def test_small_images_are_padded_with_the_ignore_label():
    augment = TrainAugment((32, 40), scale_range=(1.0, 1.0), flip=False)
    image, label = pair(20, 30)
    out_image, out_label = augment(image, label, torch.Generator().manual_seed(0))
    assert out_label.shape == (32, 40)
    assert (out_label[20:] == 255).all() and (out_label[:, 30:] == 255).all()
    assert torch.equal(out_label[:20, :30], label)
    torch.testing.assert_close(out_image[:, :20, :30], normalize(image))
    assert (out_image[:, 20:] == 0).all()  # zero = the mean colour after normalisation


def test_flip_moves_image_and_label_together():
    augment = TrainAugment((20, 30), scale_range=(1.0, 1.0), flip=True)
    image, label = pair()
    flipped = 0
    for seed in range(8):
        out_image, out_label = augment(image, label, torch.Generator().manual_seed(seed))
        is_flipped = torch.equal(out_label, label.flip(-1))
        assert is_flipped or torch.equal(out_label, label)
        expected = normalize(image.flip(-1) if is_flipped else image)
        torch.testing.assert_close(out_image, expected)
        flipped += is_flipped
    assert 0 < flipped < 8


def test_seeded_augmentation_depends_on_seed_epoch_and_index_only():
    base = [pair() for _ in range(3)]
    augment = TrainAugment((16, 16))
    data = SeededAugmentation(base, augment, seed=1)
    again = SeededAugmentation(base, augment, seed=1)
    assert torch.equal(data[2][0], again[2][0])
    data.set_epoch(1)
    assert not torch.equal(data[2][0], again[2][0])


def test_denormalize_inverts_normalize():
    image, _ = pair()
    torch.testing.assert_close(denormalize(normalize(image)), image.float() / 255)
    with pytest.raises(ValueError, match="scale_range must be 0 < low <= high"):
        TrainAugment((8, 8), scale_range=(2.0, 1.0))

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


@pytest.mark.parametrize("scale_range", [(0.75, 0.75), (1.3, 1.3), (0.75, 2.0)])
def test_labels_stay_aligned_with_their_image_after_rescaling(scale_range):
    # Image and label both hold each pixel's own column index. Bilinear resizing of that ramp
    # gives the exact source column of every output pixel's centre; the label must agree.
    width = 120
    columns = torch.arange(width).expand(90, width)
    image = columns.to(torch.uint8).expand(3, 90, width)
    augment = TrainAugment((48, 48), scale_range=scale_range, flip=True)
    offsets = []
    for seed in range(12):
        out_image, out_label = augment(image, columns, torch.Generator().manual_seed(seed))
        source_column = denormalize(out_image)[0] * 255  # exact where not clamped at the border
        inside = (out_label != 255) & (source_column > 0.5) & (source_column < width - 1.5)
        offsets.append(out_label[inside] - source_column[inside])
    offsets = torch.cat(offsets)
    assert offsets.abs().max() <= 0.5 + 1e-3  # each label is the nearest source pixel's
    if scale_range != (0.75, 0.75):  # there every third pixel centre falls exactly between two
        assert offsets.mean().abs() < 0.1  # no drift to one side (nearest, not floor: -0.35)

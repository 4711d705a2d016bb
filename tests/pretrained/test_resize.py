"""mmseg's test resize: mmcv's sizes, and OpenCV's uint8 bilinear repeated value for value."""

import numpy as np
import pytest
import torch

from attnblocks.pretrained import rescale_size, resize_uint8, scale_size


def _cases():
    """(source (h, w), target (h, w), channels): random sizes and OpenCV's special cases."""
    rng = np.random.default_rng(0)
    cases = []
    for index in range(60):
        source = tuple(int(v) for v in rng.integers(1, 90, 2))
        target = tuple(int(v) for v in rng.integers(1, 130, 2))
        kind = index % 6
        if kind == 0:  # exactly twice as large
            target = (2 * source[0], 2 * source[1])
        elif kind == 1:  # exactly half: OpenCV averages 2 x 2 blocks there
            source = (2 * source[0], 2 * source[1])
            target = (source[0] // 2, source[1] // 2)
        elif kind == 2:  # one axis unchanged
            target = (source[0], target[1])
        cases.append((source, target, (3, 1, 4)[index % 3]))
    cases += [((5, 7), (5, 7), 3), ((1, 1), (9, 4), 3), ((200, 720), (569, 2049), 3),
              ((60, 200), (77, 257), 3), ((128, 96), (172, 129), 3)]  # fmt: skip
    return cases


@pytest.mark.parametrize(("source", "target", "channels"), _cases())
def test_equals_opencv_inter_linear(source, target, channels):
    cv2 = pytest.importorskip("cv2")  # what mmcv.imresize calls (the test extra has it)
    seed = source[0] * 1000 + source[1]
    image = np.random.default_rng(seed).integers(0, 256, (*source, channels), dtype=np.uint8)
    expected = cv2.resize(image, target[::-1], interpolation=cv2.INTER_LINEAR)
    expected = torch.from_numpy(expected.reshape(*target, channels)).permute(2, 0, 1)
    ours = resize_uint8(torch.from_numpy(image).permute(2, 0, 1), target)
    assert ours.dtype == torch.uint8 and torch.equal(ours, expected)


def test_values_worked_by_hand():
    # 1 x 2 -> 1 x 3: positions 1/6, 5/6... source x = (d + 0.5) * 2/3 - 0.5 = -1/6, 1/2, 7/6:
    # the outer two clamp to the edge pixels; the middle weighs 1024/1024 -> (10 + 20) / 2
    pixels = torch.tensor([[[10, 20]]], dtype=torch.uint8)
    assert resize_uint8(pixels, (1, 3)).tolist() == [[[10, 15, 20]]]
    # 2 x 2 -> 1 x 1 is exactly half: the block's mean rounded, (1 + 2 + 3 + 4 + 2) >> 2 = 3
    block = torch.tensor([[[1, 2], [3, 4]]], dtype=torch.uint8)
    assert resize_uint8(block, (1, 1)).tolist() == [[[3]]]


def test_batches_and_devices_keep_their_shape():
    pixels = torch.randint(0, 256, (2, 3, 11, 13), dtype=torch.uint8)
    out = resize_uint8(pixels, (7, 20))
    assert out.shape == (2, 3, 7, 20)
    assert torch.equal(out[1], resize_uint8(pixels[1], (7, 20)))


def test_bad_input():
    with pytest.raises(ValueError, match="expected non-empty uint8 images"):
        resize_uint8(torch.zeros(3, 4, 4), (2, 2))
    with pytest.raises(ValueError, match="positive ints"):
        resize_uint8(torch.zeros(3, 4, 4, dtype=torch.uint8), (0, 2))


def test_sizes_are_rounded_as_mmcv_rounds_them():
    # mmcv.rescale_size((w, h), (2049, 1025)): factor min(2049 / 720, 1025 / 200)
    assert rescale_size(200, 720, (2049, 1025)) == (569, 2049)
    assert rescale_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert rescale_size(1024, 2048, (2049, 1025)) == (1025, 2049)  # 1024 * 1.0005 + 0.5
    assert rescale_size(128, 96, (1025, 2049)) == (1367, 1025)  # the bounds in either order
    assert rescale_size(3, 5, 0.5) == (2, 3)  # 1.5 and 2.5 round half up, not to even
    assert scale_size(3, 5, 0.5) == (2, 3)
    with pytest.raises(ValueError, match="positive"):
        rescale_size(3, 5, 0.0)

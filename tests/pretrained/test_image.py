"""read_rgb: files, PIL images of any mode, arrays and tensors to (3, H, W) uint8 RGB."""

import numpy as np
import pytest
import torch
from PIL import Image

from attnblocks.pretrained import read_rgb

RGB = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
EXPECTED = torch.from_numpy(RGB).permute(2, 0, 1)


def test_array_tensor_pil_and_file_agree(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "image.png")
    for image in (RGB, torch.from_numpy(RGB), Image.fromarray(RGB), tmp_path / "image.png",
                  str(tmp_path / "image.png")):  # fmt: skip
        pixels = read_rgb(image)
        assert pixels.dtype == torch.uint8 and torch.equal(pixels, EXPECTED), type(image)


def test_grey_and_rgba_become_rgb():
    grey = RGB[..., 0]
    assert torch.equal(read_rgb(grey), torch.from_numpy(grey).expand(3, -1, -1))
    assert torch.equal(read_rgb(Image.fromarray(grey)), read_rgb(grey))
    rgba = np.concatenate([RGB, np.full((5, 7, 1), 9, np.uint8)], axis=-1)
    assert torch.equal(read_rgb(rgba), EXPECTED)
    assert torch.equal(read_rgb(Image.fromarray(rgba, mode="RGBA")), EXPECTED)


def test_bad_images():
    with pytest.raises(ValueError, match=r"uint8 image array.*got dtype torch.float32"):
        read_rgb(RGB.astype(np.float32))
    with pytest.raises(ValueError, match=r"shape \(5, 7, 2\)"):
        read_rgb(RGB[..., :2])
    with pytest.raises(TypeError, match="got list"):
        read_rgb([[0]])

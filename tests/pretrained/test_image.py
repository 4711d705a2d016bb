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


def _jpeg_with_orientation(path, orientation: int) -> np.ndarray:
    """A JPEG of a 6 x 10 gradient saved with EXIF ``orientation``; returns the stored pixels."""
    rows, cols = np.meshgrid(np.arange(6), np.arange(10), indexing="ij")
    stored = np.stack([rows * 40, cols * 25, (rows + cols) * 15], axis=-1).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, quality=100, exif=exif.tobytes())
    return np.asarray(Image.open(path).convert("RGB"))  # as decoded, before any turning


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_opencv_does(tmp_path, orientation):
    cv2 = pytest.importorskip("cv2")  # the test extra has it; mmseg decodes with OpenCV
    path = tmp_path / "photo.jpg"
    decoded = _jpeg_with_orientation(path, orientation)
    upright = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]  # what mmseg reads, as RGB
    pixels = read_rgb(path)
    assert torch.equal(pixels, torch.from_numpy(upright.copy()).permute(2, 0, 1))
    if orientation >= 5:  # a quarter turn: a 6 x 10 picture is shown 10 x 6
        assert pixels.shape == (3, 10, 6) and decoded.shape == (6, 10, 3)
    with Image.open(path) as opened:  # a PIL image opened from the file is turned the same
        assert torch.equal(read_rgb(opened), pixels)


def test_a_portrait_phone_photo_is_read_upright(tmp_path):
    # stored lying on its side with Orientation 6 (turn 90 degrees clockwise to show)
    path = tmp_path / "phone.jpg"
    decoded = torch.from_numpy(_jpeg_with_orientation(path, 6).copy())  # (6, 10, 3)
    expected = decoded.rot90(-1, dims=(0, 1)).permute(2, 0, 1)  # turned clockwise: (3, 10, 6)
    assert torch.equal(read_rgb(path), expected)


def _cv2_color(cv2, path) -> torch.Tensor:
    return torch.from_numpy(cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1].copy()).permute(
        2, 0, 1
    )


@pytest.mark.parametrize("mode", ["L", "1", "P", "P-transparent", "LA", "RGBA", "I;16", "RGB;16"])
def test_modes_are_read_as_opencv_reads_them(tmp_path, mode):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(3)
    path = tmp_path / "image.png"
    if mode == "I;16":
        cv2.imwrite(str(path), rng.integers(0, 65536, (5, 7), dtype=np.uint16))
    elif mode == "RGB;16":
        cv2.imwrite(str(path), rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16))
    elif mode.startswith("P"):
        image = Image.fromarray(rng.integers(0, 4, (5, 7), dtype=np.uint8), "P")
        image.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0, 1, 2, 3])
        image.save(path, **({"transparency": 1} if mode == "P-transparent" else {}))
    else:
        channels = {"L": 1, "1": 1, "LA": 2, "RGBA": 4}[mode]
        values = rng.integers(0, 256, (5, 7, channels), dtype=np.uint8)
        if mode == "1":
            values = (values > 127).astype(np.uint8) * 255
        Image.fromarray(values.squeeze(-1) if channels == 1 else values).convert(mode).save(path)
    opened_as = {"P-transparent": ("P",), "I;16": ("I;16", "I"), "RGB;16": ("RGB",)}
    with Image.open(path) as opened:  # the case is the one meant (Pillow opens it so)
        assert opened.mode in opened_as.get(mode, (mode,))
    assert torch.equal(read_rgb(path), _cv2_color(cv2, path))


def test_sixteen_bit_grey_keeps_the_high_byte(tmp_path):
    values = np.array([[0, 255, 256, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")  # a uint16 array: mode I;16
    assert read_rgb(tmp_path / "grey16.png")[:, 0].tolist() == [[0, 0, 1, 255]] * 3


@pytest.mark.parametrize("mode", ["CMYK", "F"])
def test_modes_opencv_converts_its_own_way_are_refused(tmp_path, mode):
    image = Image.new(mode, (4, 3))
    with pytest.raises(ValueError, match=rf"cannot read a '{mode}' image as mmseg"):
        read_rgb(image)

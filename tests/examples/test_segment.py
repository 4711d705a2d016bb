"""examples/segment.py: label map and overlay with legend, from mmseg, saved folder or train.py."""

import numpy as np
import pytest
import torch
from PIL import Image

from attnblocks.models import CCNet, DANet
from attnblocks.pretrained import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    PretrainedConfig,
    bit_palette,
)
from examples import segment
from tests.compat.mmseg_reference import CCNET, fixture_checkpoint

IMAGE = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "street.png"
    Image.fromarray(IMAGE).save(path)
    return path


def read(path):
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


def test_mmseg_checkpoint_gives_cityscapes_colours_and_a_legend(tmp_path, image_file):
    checkpoint = tmp_path / "danet_mmseg.pth"
    torch.save(fixture_checkpoint(), checkpoint)
    # --no-resize: Cityscapes' test resize would enlarge the tiny image to 1024 rows
    args = [str(image_file), "--checkpoint", str(checkpoint), "--mmseg", "--no-resize",
            "--out", str(tmp_path)]  # fmt: skip
    result = segment.main(args)
    expected = DANet.from_mmseg(checkpoint).predict_image(IMAGE, resize=False)
    assert torch.equal(result["labels_map"], expected)
    colours = read(result["labels"])
    assert colours.shape == (45, 70, 3)
    palette = np.array(CITYSCAPES_PALETTE, dtype=np.uint8)
    assert np.array_equal(colours, palette[expected.numpy()])  # the official colour of each label
    assert result["classes"] == [CITYSCAPES_CLASSES[i] for i in expected.unique().tolist()]
    overlay = read(result["overlay"])
    assert overlay.shape[0] >= 45 and overlay.shape[1] > 70  # the legend panel on the right
    blended = (0.5 * IMAGE + 0.5 * colours.astype(float)).round()
    assert np.abs(overlay[:45, :70].astype(float) - blended).max() <= 1  # alpha 0.5


def test_saved_folder_with_whole_image_prediction(tmp_path, image_file):
    torch.manual_seed(0)
    config = PretrainedConfig(class_names=("a", "b"), palette=((255, 0, 0), (0, 0, 255)))
    model = DANet("resnet18", num_classes=2, pretrained_config=config).eval()
    model.save_pretrained(tmp_path / "model")
    result = segment.main([str(image_file), "--checkpoint", str(tmp_path / "model"),
                           "--whole", "--out", str(tmp_path / "out")])  # fmt: skip
    assert torch.equal(result["labels_map"], model.predict_image(IMAGE))
    assert set(map(tuple, np.unique(read(result["labels"]).reshape(-1, 3), axis=0))) <= {
        (255, 0, 0), (0, 0, 255)}  # fmt: skip


def test_train_checkpoint_brings_its_class_names(tmp_path, image_file):
    torch.manual_seed(0)
    model_config = {"backbone": "resnet18", "num_classes": 3}
    state = DANet(**model_config).state_dict()
    checkpoint = {"model_config": model_config, "model": state, "classes": ["x", "y", "z"]}
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    result = segment.main([str(image_file), "--checkpoint", str(tmp_path / "checkpoint.pt"),
                           "--out", str(tmp_path)])  # fmt: skip
    assert set(result["classes"]) <= {"x", "y", "z"} and result["classes"]


@pytest.mark.parametrize(
    ("file_name", "flags"),
    [
        # a release's file name says CCNet by itself
        ("ccnet_r50-d8_512x1024_40k_cityscapes_20200616_142517-4123f401.pth", []),
        ("my_weights.pth", ["--model", "ccnet"]),  # any other name: told
    ],
)
def test_mmseg_ccnet_checkpoint(tmp_path, image_file, file_name, flags):
    checkpoint = tmp_path / file_name
    torch.save(fixture_checkpoint(CCNET), checkpoint)
    result = segment.main([str(image_file), "--checkpoint", str(checkpoint), "--mmseg",
                           "--no-resize", "--out", str(tmp_path), *flags])  # fmt: skip
    expected = CCNet.from_mmseg(checkpoint).predict_image(IMAGE, resize=False)
    assert torch.equal(result["labels_map"], expected)


def test_ccnet_saved_folder_and_the_danet_only_option(tmp_path, image_file):
    torch.manual_seed(0)
    config = PretrainedConfig(class_names=("a", "b", "c"), palette=bit_palette(3))
    model = CCNet("resnet18", num_classes=3, pretrained_config=config).eval()
    model.save_pretrained(tmp_path / "model")
    args = [str(image_file), "--checkpoint", str(tmp_path / "model"), "--model", "ccnet",
            "--whole", "--out", str(tmp_path / "out")]  # fmt: skip
    assert torch.equal(segment.main(args)["labels_map"], model.predict_image(IMAGE))
    with pytest.raises(SystemExit, match="CCNet has no PAM"):
        segment.main([*args, "--attention-backend", "chunked"])


def test_missing_checkpoint(tmp_path, image_file):
    with pytest.raises(SystemExit, match="no checkpoint at"):
        segment.main([str(image_file), "--checkpoint", str(tmp_path / "none.pt")])

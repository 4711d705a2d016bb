"""PretrainedConfig: validation, JSON round trip, normalisation, test resize, colours."""

import json

import pytest
import torch

from attnblocks.pretrained import CITYSCAPES_CLASSES, PretrainedConfig


def test_json_round_trip_gives_an_equal_config():
    config = PretrainedConfig.for_dataset("cityscapes", crop_size=(769, 769), stride=513)
    restored = PretrainedConfig.resolve(json.loads(json.dumps(config.to_dict())), 19)
    assert restored == config and restored.stride == (513, 513)
    assert isinstance(restored.palette[0], tuple) and restored.class_names == CITYSCAPES_CLASSES


def test_none_gives_generic_names_and_imagenet_statistics():
    config = PretrainedConfig.resolve(None, 3)
    assert config.class_names == ("class 0", "class 1", "class 2") and config.num_classes == 3
    assert config.mean == (123.675, 116.28, 103.53) and config.image_scale is None


def test_normalize_matches_a_float64_computation():
    config = PretrainedConfig.generic(2)
    pixels = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    mean = torch.tensor(config.mean, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float64).view(3, 1, 1)
    expected = (pixels.double() - mean) / std
    torch.testing.assert_close(config.normalize(pixels).double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dataset, size, factor", [
    ("cityscapes", (1024, 2048), 1.0), ("cityscapes", (512, 1024), 2.0),
    ("ade20k", (375, 500), 512 / 375), ("ade20k", (400, 4000), 2048 / 4000),
])  # fmt: skip
def test_rescale_factor_is_mmsegs_keep_ratio_resize(dataset, size, factor):
    # the largest size with long edge <= max(scale) and short edge <= min(scale)
    assert PretrainedConfig.for_dataset(dataset).rescale_factor(*size) == pytest.approx(factor)


def test_colorize_paints_classes_and_blacks_out_void():
    config = PretrainedConfig.for_dataset("cityscapes")
    labels = torch.tensor([[0, 13], [255, -1]])
    colours = config.colorize(labels)
    assert colours.dtype == torch.uint8 and colours.shape == (2, 2, 3)
    assert colours[0, 0].tolist() == [128, 64, 128] and colours[0, 1].tolist() == [0, 0, 142]
    assert colours[1].sum() == 0


@pytest.mark.parametrize("changes, message", [
    (dict(palette=((0, 0, 0),)), "one colour per class: 2 classes, got 1 colours"),
    (dict(palette=((0, 0, 0), (0, 0, 300))), r"\(R, G, B\) in 0..255"),
    (dict(std=(1.0, 0.0, 1.0)), "std positive"),
    (dict(crop_size=(0, 5)), "crop_size must be None or a pair of positive ints"),
])  # fmt: skip
def test_bad_fields(changes, message):
    fields = {"class_names": ("a", "b"), "palette": ((0, 0, 0), (1, 1, 1)), **changes}
    with pytest.raises(ValueError, match=message):
        PretrainedConfig(**fields)


def test_resolve_checks_the_class_count_and_field_names():
    with pytest.raises(ValueError, match="names 19 classes, the model has num_classes=21"):
        PretrainedConfig.resolve(PretrainedConfig.for_dataset("cityscapes"), 21)
    with pytest.raises(ValueError, match=r"unknown PretrainedConfig fields \['colours'\]"):
        PretrainedConfig.resolve({"class_names": ["a"], "palette": [[0, 0, 0]], "colours": 1}, 1)
    with pytest.raises(ValueError, match="unknown dataset 'coco'"):
        PretrainedConfig.for_dataset("coco")


def test_test_size_is_mmcvs_keep_ratio_rescale():
    config = PretrainedConfig.for_dataset("cityscapes", image_scale=(2049, 1025))
    assert config.test_size(200, 720) == (569, 2049)  # int(x * factor + 0.5), as mmcv rounds
    assert config.test_size(1024, 2048) == (1025, 2049)
    assert PretrainedConfig.generic(3).test_size(17, 5) == (17, 5)  # no image_scale: unchanged

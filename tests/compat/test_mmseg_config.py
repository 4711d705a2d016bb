"""mmseg's config text from a checkpoint's meta, read as data: literals kept, code never run."""

import pytest

from attnblocks.compat.mmseg_config import (
    UNREADABLE,
    MMSegTestSetup,
    mmseg_config_of,
    mmseg_decode_head_types,
    mmseg_test_setup,
    parse_mmseg_config,
)
from tests.pretrained.mmseg_meta import meta_0x, meta_1x

# The shape of mmseg 0.x's Config.pretty_text as saved in a 769x769 release's meta["config"].
PRETTY_TEXT = """norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    pretrained='open-mmlab://resnet50_v1c',
    backbone=dict(type='ResNetV1c', depth=50, dilations=(1, 1, 2, 4), norm_cfg=norm_cfg),
    decode_head=dict(type='DAHead', in_channels=2048, num_classes=19, align_corners=True,
                     loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(769, 769), stride=(513, 513)))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=(2049, 1025), flip=False,
         transforms=[dict(type='Resize', keep_ratio=True)])
]
lr = -0.01
palette = {'road': [128, 64, 128]}
"""


def test_literals_dict_calls_and_earlier_names_are_read():
    config = parse_mmseg_config(PRETTY_TEXT)
    model = config["model"]
    assert model["test_cfg"] == {"mode": "slide", "crop_size": (769, 769), "stride": (513, 513)}
    assert model["decode_head"]["align_corners"] is True
    assert model["backbone"]["norm_cfg"] == {"type": "SyncBN", "requires_grad": True}
    assert config["test_pipeline"][1]["img_scale"] == (2049, 1025)
    assert config["lr"] == -0.01 and config["palette"] == {"road": [128, 64, 128]}
    assert mmseg_decode_head_types(config) == ("DAHead",)


def test_code_is_never_run(tmp_path):
    marker = tmp_path / "ran"
    text = (
        f"import os\nx = os.system('touch {marker}')\ny = __import__('os')\n"
        f"z = dict(a=open('{marker}', 'w'))\nw = [1, 2][0]\nv = dict(**{{'a': 1}})\n"
    )
    config = parse_mmseg_config(text)
    assert not marker.exists()
    assert config["x"] is UNREADABLE and config["y"] is UNREADABLE and config["w"] is UNREADABLE
    assert config["z"] == {"a": UNREADABLE} and config["v"] is UNREADABLE


def test_meta_of_both_generations_and_none():
    assert mmseg_config_of({"config": PRETTY_TEXT})["model"]["type"] == "EncoderDecoder"
    assert mmseg_config_of({"cfg": "model = dict(type='X')"})["model"] == {"type": "X"}
    assert mmseg_config_of({}) is None and mmseg_config_of({"config": "  "}) is None


def test_a_cascade_lists_its_heads_in_order():
    text = "model = dict(decode_head=[dict(type='FCNHead'), dict(type='OCRHead')])"
    assert mmseg_decode_head_types(parse_mmseg_config(text)) == ("FCNHead", "OCRHead")
    assert mmseg_decode_head_types(parse_mmseg_config("model = 3")) == ()


def test_text_that_is_not_python_is_a_clear_error():
    with pytest.raises(ValueError, match="config text is not readable"):
        parse_mmseg_config("model = dict(")


def test_the_test_setup_of_a_0x_config():
    setup = mmseg_test_setup({"config": PRETTY_TEXT, "CLASSES": ("a", "b"),
                              "PALETTE": [[1, 2, 3], [4, 5, 6]]})  # fmt: skip
    assert setup == MMSegTestSetup(
        dataset=None, image_scale=(2049, 1025), mode="slide", crop_size=(769, 769),
        stride=(513, 513), align_corners=True, mean=(123.675, 116.28, 103.53),
        std=(58.395, 57.12, 57.375), bgr_to_rgb=True, class_names=("a", "b"),
        palette=((1, 2, 3), (4, 5, 6)),
    )  # fmt: skip


def test_early_0x_configs_keep_test_cfg_at_the_top_level():
    text = (
        "model = dict(type='EncoderDecoder', decode_head=dict(type='CCHead'))\n"
        "test_cfg = dict(mode='slide', crop_size=(769, 769), stride=(513, 513))\n"
        "data = dict(test=dict(type='CityscapesDataset', pipeline=[dict(type='MultiScaleFlipAug',"
        " img_scale=(2049, 1025), transforms=[dict(type='Resize', keep_ratio=True)])]))\n"
    )
    setup = mmseg_test_setup({"config": text})
    assert (setup.mode, setup.crop_size, setup.stride) == ("slide", (769, 769), (513, 513))
    assert setup.align_corners is False  # mmseg's default when the head does not say
    assert setup.image_scale == (2049, 1025) and setup.dataset == "cityscapes"


@pytest.mark.parametrize("meta_of", [meta_0x, meta_1x])
def test_configs_written_by_mmengine_from_mmseg_configs(meta_of):
    # pretty_text of mmseg 1.2.2's own config for the release (generate/make_release_meta.py)
    setup = mmseg_test_setup(meta_of("ccnet_r50-d8_4xb2-40k_cityscapes-769x769"))
    assert setup.image_scale == (2049, 1025) and setup.align_corners is True
    assert (setup.mode, setup.crop_size, setup.stride) == ("slide", (769, 769), (513, 513))
    assert setup.dataset == "cityscapes" and setup.bgr_to_rgb is True
    assert setup.class_names[0] == "road" and setup.palette[0] == (128, 64, 128)
    ade = mmseg_test_setup(meta_of("danet_r50-d8_4xb4-80k_ade20k-512x512"))
    assert ade.mode == "whole" and ade.crop_size is None and ade.image_scale == (2048, 512)
    assert ade.align_corners is False and ade.dataset == "ade20k"
    cascade = mmseg_test_setup(meta_of("ocrnet_hr18_4xb2-40k_cityscapes-512x1024"))
    assert cascade.align_corners is False and cascade.mode == "whole"


def test_what_the_meta_does_not_say_is_none():
    assert mmseg_test_setup({}) == MMSegTestSetup()
    setup = mmseg_test_setup({"config": "model = dict(test_cfg=dict(mode=open('x')))\n"})
    assert setup.mode is None and setup.align_corners is None and setup.image_scale is None
    odd = mmseg_test_setup({"CLASSES": "road", "PALETTE": [[1, 2]]})
    assert odd.class_names is None and odd.palette is None


def test_settings_predict_image_does_not_follow_are_warned_about():
    text = (
        "model = dict(data_preprocessor=dict(test_cfg=dict(size_divisor=32)))\n"
        "test_pipeline = [dict(type='Resize', scale=(512, 256), keep_ratio=False)]\n"
    )
    with pytest.warns(UserWarning) as caught:
        setup = mmseg_test_setup({"cfg": text})
    messages = " | ".join(str(w.message) for w in caught)
    assert "pads test images" in messages and "without keeping the aspect ratio" in messages
    assert setup.image_scale == (512, 256)


def test_an_unreadable_config_text_is_warned_about_and_skipped():
    with pytest.warns(UserWarning, match="config text is not readable.*not read from it"):
        setup = mmseg_test_setup({"config": "model = dict(", "CLASSES": ("a", "b")})
    assert setup.class_names == ("a", "b") and setup.mode is None

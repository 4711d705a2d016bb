"""mmseg's config text from a checkpoint's meta, read as data: literals kept, code never run."""

import pytest

from attnblocks.compat.mmseg_config import (
    UNREADABLE,
    mmseg_config_of,
    mmseg_decode_head_types,
    parse_mmseg_config,
)

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

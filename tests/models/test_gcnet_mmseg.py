"""GCNet.from_mmseg: mmsegmentation's GCNet reproduced, strict loading, release shapes, settings.

The scaffold's checks that do not depend on the model (refused backbones, files with
objects, missing files) are tests/models/test_danet_mmseg.py's.
"""

import pytest
import torch

from attnblocks import ContextBlock
from attnblocks.models import GCNet
from tests.compat.mmseg_reference import fixture_state_dict
from tests.models.mmseg_checks import assert_reproduces_fixture, assert_strict_error
from tests.models.nonlocal_family_checks import (
    GCNET,
    assert_loads_release_shapes,
    assert_reproduces_through_from_mmseg,
    fixture_checkpoint,
    fixture_meta,
    head_output,
    renamed,
)


def test_reproduces_mmseg_from_a_released_file(tmp_path):
    path = tmp_path / "gcnet_r50-d8_fixture.pth"
    torch.save(fixture_checkpoint(GCNET), path)  # {"meta", "state_dict"}, auxiliary_head.*
    model = GCNet.from_mmseg(path)
    assert not model.training and model.backbone_name == "resnet50c" and model.num_classes == 19
    assert not model.align_corners and model.pretrained_config.dataset == "cityscapes"
    block = model.head.attention
    assert isinstance(block, ContextBlock) and block.planes == 128
    assert block.pooling == "att" and block.fusion == ("channel_add",)
    assert_reproduces_fixture(model, GCNET, head_output)


def test_reproduces_mmseg_through_models_from_mmseg(tmp_path):
    path = tmp_path / "gcnet.pth"
    torch.save(fixture_checkpoint(GCNET), path)
    assert_reproduces_through_from_mmseg(path, GCNET, GCNet)  # the class read from the meta


def test_reproduces_mmseg_from_a_bare_state_dict_through_models_from_mmseg():
    assert_reproduces_through_from_mmseg(fixture_state_dict(GCNET), GCNET, GCNet)  # from keys


def test_the_block_settings_come_from_the_config_else_the_weights():
    state = fixture_state_dict(GCNET)
    bare = GCNet.mmseg_model_options(state, {}, None)
    assert bare["ratio"] == 0.25 and bare["pooling"] == "att" and bare["fusion"] == ("channel_add",)
    meta = fixture_meta(GCNET, ratio=1 / 4, fusion_types=("channel_add",), pooling_type="att")
    assert GCNet.mmseg_model_options(state, meta, None)["ratio"] == 0.25
    # Weights of another configuration: average pooling, both fusions, 96 of 512 channels.
    other = {k: v for k, v in state.items() if "conv_mask" not in k}
    other.update(renamed({k: v for k, v in state.items() if "channel_add_conv" in k},
                         "channel_add", "channel_mul"))  # fmt: skip
    other["decode_head.gc_block.channel_add_conv.0.weight"] = torch.zeros(96, 512, 1, 1)
    options = GCNet.mmseg_model_options(other, {}, None)
    assert options["pooling"] == "avg" and options["fusion"] == ("channel_add", "channel_mul")
    assert int(512 * options["ratio"]) == 96


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("decode_head.gc_block.channel_add_conv.1.bias"),
         r"missing keys \(1\): \['head.attention.channel_add_conv.1.bias'\]"),
        (lambda s: s.update({"decode_head.gc_block.channel_add_conv.4.weight": torch.zeros(1)}),
         r"unexpected keys \(1\): \['head.attention.channel_add_conv.4.weight'\]"),
        (lambda s: s.update({"decode_head.gc_block.conv_mask.weight": torch.zeros(2, 512, 1, 1)}),
         r"shape mismatches: \['head.attention.conv_mask.weight: checkpoint \(2, 512, 1, 1\), "
         r"model \(1, 512, 1, 1\)'\]"),
    ],
    ids=["removed", "extra", "reshaped"],
)  # fmt: skip
def test_strict_loading_names_what_does_not_fit(change, message):
    assert_strict_error(GCNet, GCNET, change, message)


@pytest.mark.parametrize(
    "layer3_blocks, num_classes", [(23, 150), (6, 21)], ids=["R-101-ADE20K", "R-50-VOC"]
)
def test_release_shapes_load(layer3_blocks, num_classes):
    model, state = assert_loads_release_shapes(GCNet, GCNET, layer3_blocks, num_classes)
    assert torch.equal(
        model.state_dict()["head.attention.channel_add_conv.1.weight"],
        state["decode_head.gc_block.channel_add_conv.1.weight"],
    )

"""NLNet.from_mmseg: mmsegmentation's NLNet reproduced, strict loading, release shapes, settings.

The scaffold's checks that do not depend on the model (refused backbones, files with
objects, missing files) are tests/models/test_danet_mmseg.py's.
"""

import pytest
import torch

from attnblocks import NonLocal2d
from attnblocks.models import NLNet, base
from tests.compat.mmseg_reference import fixture_state_dict
from tests.models.mmseg_checks import assert_reproduces_fixture, assert_strict_error
from tests.models.nonlocal_family_checks import (
    NLNET,
    assert_loads_release_shapes,
    assert_reproduces_through_from_mmseg,
    fixture_checkpoint,
    fixture_meta,
    head_output,
)


def test_reproduces_mmseg_from_a_released_file(tmp_path):
    path = tmp_path / "nonlocal_r50-d8_fixture.pth"
    torch.save(fixture_checkpoint(NLNET), path)  # {"meta", "state_dict"}, auxiliary_head.*
    model = NLNet.from_mmseg(path)
    assert not model.training and model.backbone_name == "resnet50c" and model.num_classes == 19
    assert model.output_stride == 8 and not model.align_corners
    assert model.pretrained_config.dataset == "cityscapes"
    block = model.head.attention
    assert isinstance(block, NonLocal2d) and block.mode == "embedded_gaussian"
    assert block.inter_channels == 256 and block.use_scale
    assert_reproduces_fixture(model, NLNET, head_output)


def test_reproduces_mmseg_through_models_from_mmseg(tmp_path):
    path = tmp_path / "nonlocal.pth"
    torch.save(fixture_checkpoint(NLNET), path)
    assert_reproduces_through_from_mmseg(path, NLNET, NLNet)  # the class read from the meta


def test_reproduces_mmseg_from_a_bare_state_dict_through_models_from_mmseg():
    assert_reproduces_through_from_mmseg(fixture_state_dict(NLNET), NLNET, NLNet)  # from keys


def test_the_block_settings_come_from_the_config():
    state = fixture_state_dict(NLNET)
    meta = fixture_meta(NLNET, mode="dot_product", use_scale=False)
    options = NLNet.mmseg_model_options(state, meta, None)
    assert options["mode"] == "dot_product" and options["use_scale"] is False
    assert options["reduction"] == 2 and options["backbone"] == "resnet50c"
    bare = NLNet.mmseg_model_options(state, {}, None)
    assert bare["reduction"] == 2 and "mode" not in bare and "use_scale" not in bare


def test_a_release_name_downloads_and_sets_window_and_alignment(monkeypatch):
    fetched = []

    def download(name):
        fetched.append(name)
        return fixture_checkpoint(NLNET)

    monkeypatch.setattr(base, "load_mmseg_checkpoint", download)
    name = "nonlocal_r50-d8_4xb2-40k_cityscapes-769x769"
    model = NLNet.from_mmseg(name, attention_backend="chunked")
    assert fetched == [name]
    assert model.align_corners and model.pretrained_config.crop_size == (769, 769)
    assert model.head.attention.backend == "chunked"  # keywords reach the constructor


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("decode_head.nl_block.theta.conv.weight"),
         r"missing keys \(1\): \['head.attention.theta.weight'\]"),
        (lambda s: s.update({"decode_head.nl_block.gamma": torch.zeros(1)}),
         r"not part of mmsegmentation's NLNet.*\['decode_head.nl_block.gamma'\]"),
        (lambda s: s.update({"decode_head.nl_block.phi.conv.weight": torch.zeros(256, 512, 3, 3)}),
         r"shape mismatches: \['head.attention.phi.weight: checkpoint \(256, 512, 3, 3\), "
         r"model \(256, 512, 1, 1\)'\]"),
    ],
    ids=["removed", "extra", "reshaped"],
)  # fmt: skip
def test_strict_loading_names_what_does_not_fit(change, message):
    assert_strict_error(NLNet, NLNET, change, message)


@pytest.mark.parametrize(
    "layer3_blocks, num_classes", [(23, 150), (6, 21)], ids=["R-101-ADE20K", "R-50-VOC"]
)
def test_release_shapes_load(layer3_blocks, num_classes):
    model, state = assert_loads_release_shapes(NLNet, NLNET, layer3_blocks, num_classes)
    loaded = model.state_dict()
    assert torch.equal(
        loaded["head.attention.conv_out.norm.running_var"],
        state["decode_head.nl_block.conv_out.bn.running_var"],
    )

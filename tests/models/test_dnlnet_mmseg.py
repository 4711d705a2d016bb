"""DNLNet.from_mmseg: mmsegmentation's DNLNet reproduced, strict loading, release shapes, settings.

The scaffold's checks that do not depend on the model (refused backbones, files with
objects, missing files) are tests/models/test_danet_mmseg.py's.
"""

import pytest
import torch

from attnblocks import DisentangledNonLocal2d
from attnblocks.models import DNLNet, base
from tests.compat.mmseg_reference import fixture_state_dict
from tests.models.mmseg_checks import assert_reproduces_fixture, assert_strict_error
from tests.models.nonlocal_family_checks import (
    DNLNET,
    assert_loads_release_shapes,
    assert_reproduces_through_from_mmseg,
    fixture_checkpoint,
    fixture_meta,
    head_output,
)


@pytest.mark.parametrize("backend", ["auto", "chunked"])
def test_reproduces_mmseg_from_a_released_file(tmp_path, backend):
    path = tmp_path / "dnl_r50-d8_fixture.pth"
    torch.save(fixture_checkpoint(DNLNET), path)  # {"meta", "state_dict"}, auxiliary_head.*
    model = DNLNet.from_mmseg(path, attention_backend=backend, chunk_size=50)
    assert not model.training and model.backbone_name == "resnet50c" and model.num_classes == 19
    assert not model.align_corners and model.pretrained_config.dataset == "cityscapes"
    block = model.head.attention
    assert isinstance(block, DisentangledNonLocal2d) and block.mode == "embedded_gaussian"
    assert block.temperature == 0.05 and block.inter_channels == 256 and block.use_scale
    assert block.backend == backend
    assert_reproduces_fixture(model, DNLNET, head_output)


def test_reproduces_mmseg_through_models_from_mmseg(tmp_path):
    path = tmp_path / "dnl.pth"
    torch.save(fixture_checkpoint(DNLNET), path)
    assert_reproduces_through_from_mmseg(path, DNLNET, DNLNet)  # the class read from the meta


def test_reproduces_mmseg_from_a_bare_state_dict_through_models_from_mmseg():
    assert_reproduces_through_from_mmseg(fixture_state_dict(DNLNET), DNLNET, DNLNet)  # from keys


def test_the_block_settings_come_from_the_config():
    state = fixture_state_dict(DNLNET)
    meta = fixture_meta(DNLNET, temperature=0.1, use_scale=False, mode="dot_product")
    options = DNLNet.mmseg_model_options(state, meta, None)
    assert options["temperature"] == 0.1 and options["use_scale"] is False
    assert options["mode"] == "dot_product" and options["reduction"] == 2
    bare = DNLNet.mmseg_model_options(state, {}, None)
    assert bare["reduction"] == 2 and not {"temperature", "mode", "use_scale"} & set(bare)


def test_a_release_name_downloads_and_sets_window_and_alignment(monkeypatch):
    fetched = []

    def download(name):
        fetched.append(name)
        return fixture_checkpoint(DNLNET)

    monkeypatch.setattr(base, "load_mmseg_checkpoint", download)
    name = "dnl_r50-d8_4xb2-80k_cityscapes-769x769"
    model = DNLNet.from_mmseg(name)
    assert fetched == [name]
    assert model.align_corners and model.pretrained_config.crop_size == (769, 769)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("decode_head.dnl_block.conv_mask.bias"),
         r"missing keys \(1\): \['head.attention.conv_mask.bias'\]"),
        (lambda s: s.update({"decode_head.dnl_block.conv_unary.weight": torch.zeros(1)}),
         r"not part of mmsegmentation's DNLNet.*\['decode_head.dnl_block.conv_unary.weight'\]"),
        (lambda s: s.update({"decode_head.dnl_block.g.conv.weight": torch.zeros(128, 512, 1, 1)}),
         r"shape mismatches: \['head.attention.g.weight: checkpoint \(128, 512, 1, 1\), "
         r"model \(256, 512, 1, 1\)'\]"),
    ],
    ids=["removed", "extra", "reshaped"],
)  # fmt: skip
def test_strict_loading_names_what_does_not_fit(change, message):
    assert_strict_error(DNLNet, DNLNET, change, message)


@pytest.mark.parametrize(
    "layer3_blocks, num_classes", [(23, 150), (6, 19)], ids=["R-101-ADE20K", "R-50-Cityscapes"]
)
def test_release_shapes_load(layer3_blocks, num_classes):
    model, state = assert_loads_release_shapes(DNLNet, DNLNET, layer3_blocks, num_classes)
    assert torch.equal(
        model.state_dict()["head.attention.conv_mask.weight"],
        state["decode_head.dnl_block.conv_mask.weight"],
    )

"""PSANet.from_mmseg: mmsegmentation's PSANet reproduced, strict loading, release shapes
(mask 97 x 97 and 66 x 66), settings from the config or the weights.

The scaffold's checks that do not depend on the model (refused backbones, files with
objects, missing files) are tests/models/test_danet_mmseg.py's.
"""

import pytest
import torch

from attnblocks import PointwiseSpatialAttention
from attnblocks.compat import MMSEG_PSANET
from attnblocks.models import PSANet, base
from tests.compat.mmseg_reference import fixture_state_dict
from tests.models.mmseg_checks import assert_reproduces_fixture, assert_strict_error
from tests.models.nonlocal_family_checks import (
    PSANET,
    assert_loads_release_shapes,
    assert_reproduces_through_from_mmseg,
    fixture_checkpoint,
    fixture_meta,
    head_output,
    release_state_dict,
)


def one_direction(state):
    """A PSAHead checkpoint without the distribute branch of bi-direction."""
    branch = ("decode_head.reduce_p.", "decode_head.attention_p.")
    return {key: value for key, value in state.items() if not key.startswith(branch)}


def test_reproduces_mmseg_from_a_released_file(tmp_path):
    path = tmp_path / "psanet_r50-d8_fixture.pth"
    torch.save(fixture_checkpoint(PSANET), path)  # {"meta", "state_dict"}, auxiliary_head.*
    model = PSANet.from_mmseg(path)
    assert not model.training and model.backbone_name == "resnet50c" and model.num_classes == 19
    assert not model.align_corners and model.pretrained_config.dataset == "cityscapes"
    block = model.head.attention
    assert isinstance(block, PointwiseSpatialAttention) and block.mask_size == (97, 97)
    assert block.psa_type == "bi-direction" and block.shrink_factor == 2 and not block.compact
    # The fixture's 9 x 13 features shrink to 5 x 7 with align_corners=True (both odd).
    assert block.shrunk_size(9, 13) == (5, 7, True)
    assert_reproduces_fixture(model, PSANET, head_output)


def test_reproduces_mmseg_through_models_from_mmseg(tmp_path):
    path = tmp_path / "psanet.pth"
    torch.save(fixture_checkpoint(PSANET), path)
    assert_reproduces_through_from_mmseg(path, PSANET, PSANet)  # the class read from the meta


def test_reproduces_mmseg_from_a_bare_state_dict_through_models_from_mmseg():
    # No config: the 97 x 97 mask from the weights (9409 rows), bi-direction from reduce_p.
    assert_reproduces_through_from_mmseg(fixture_state_dict(PSANET), PSANET, PSANet)


def test_the_head_settings_come_from_the_config_else_the_weights():
    state = fixture_state_dict(PSANET)
    bare = PSANet.mmseg_model_options(state, {}, None)
    assert bare["mask_size"] == (97, 97) and bare["psa_type"] == "bi-direction"
    assert not {"compact", "shrink_factor", "normalization_factor", "psa_softmax"} & set(bare)
    meta = fixture_meta(PSANET, shrink_factor=1, normalization_factor=None, psa_softmax=False)
    options = PSANet.mmseg_model_options(state, meta, None)
    assert options["mask_size"] == (97, 97) and options["shrink_factor"] == 1
    assert options["normalization_factor"] is None and options["psa_softmax"] is False


def test_a_mask_or_direction_the_weights_do_not_tell_is_a_clear_error():
    state = fixture_state_dict(PSANET)
    state["decode_head.attention.1.weight"] = torch.zeros(6 * 8, 512, 1, 1)
    with pytest.raises(ValueError, match=r"has 48 output channels, not a square mask's h_m \* w_m"):
        PSANet.from_mmseg(state)
    meta = fixture_meta(PSANET, mask_size=(6, 8))  # the config says it: the options take it
    assert PSANet.mmseg_model_options(state, meta, None)["mask_size"] == (6, 8)
    collect = one_direction(fixture_state_dict(PSANET))
    with pytest.raises(ValueError, match="does not say whether it collects or distributes"):
        PSANet.from_mmseg(collect)
    meta = fixture_meta(PSANET, psa_type="collect")
    assert PSANet.mmseg_model_options(collect, meta, None)["psa_type"] == "collect"


def test_a_one_direction_head_loads_with_its_table():
    collect = one_direction(release_state_dict(PSANET, 6, 19, mask_size=5))
    collect["decode_head.proj.conv.weight"] = torch.randn(2048, 512, 1, 1)
    model = PSANet("resnet50c", 19, mask_size=5, psa_type="distribute")
    MMSEG_PSANET.load_into(model, collect)
    assert torch.equal(
        model.head.attention.mask[1].weight, collect["decode_head.attention.1.weight"]
    )


def test_a_release_name_downloads_and_sets_window_and_alignment(monkeypatch):
    fetched = []

    def download(name):
        fetched.append(name)
        return fixture_checkpoint(PSANET)

    monkeypatch.setattr(base, "load_mmseg_checkpoint", download)
    name = "psanet_r50-d8_4xb2-40k_cityscapes-769x769"
    model = PSANet.from_mmseg(name)
    assert fetched == [name]
    assert model.align_corners and model.pretrained_config.crop_size == (769, 769)
    assert model.head.attention.align_corners  # mmseg's decode head is aligned too


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("decode_head.attention_p.0.bn.running_mean"),
         r"missing keys \(1\): \['head.attention.mask_p.0.norm.running_mean'\]"),
        (lambda s: s.update({"decode_head.attention.2.weight": torch.zeros(1)}),
         r"not part of mmsegmentation's PSANet.*\['decode_head.attention.2.weight'\]"),
        (lambda s: s.update({"decode_head.proj.conv.weight": torch.zeros(2048, 1024, 3, 3)}),
         r"shape mismatches: \['head.attention.proj.conv.weight: checkpoint \(2048, 1024, 3, 3\), "
         r"model \(2048, 1024, 1, 1\)'\]"),
    ],
    ids=["removed", "extra", "reshaped"],
)  # fmt: skip
def test_strict_loading_names_what_does_not_fit(change, message):
    assert_strict_error(PSANet, PSANET, change, message)


@pytest.mark.parametrize(
    "layer3_blocks, num_classes, mask_size",
    [(23, 150, 66), (6, 21, 97)],
    ids=["R-101-ADE20K-mask66", "R-50-VOC-mask97"],
)
def test_release_shapes_load(layer3_blocks, num_classes, mask_size):
    model, state = assert_loads_release_shapes(PSANet, PSANET, layer3_blocks, num_classes,
                                               mask_size)  # fmt: skip
    assert model.head.attention.mask_size == (mask_size, mask_size)
    assert torch.equal(
        model.state_dict()["head.attention.mask_p.1.weight"],
        state["decode_head.attention_p.1.weight"],
    )

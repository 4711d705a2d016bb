"""mmseg's DANet table: each fixture key lands on a DANet key of its shape; checkpoint reading."""

import pytest
import torch

from attnblocks.compat import (
    convert_mmseg_danet_state_dict,
    mmseg_backbone_name,
    mmseg_num_classes,
    read_mmseg_checkpoint,
)
from attnblocks.models import DANet
from tests.compat.mmseg_reference import META, fixture_checkpoint, fixture_state_dict


@pytest.fixture(scope="module")
def danet_r50_keys():
    with torch.device("meta"):  # shapes only: no memory, no init
        return {key: value.shape for key, value in DANet("resnet50c").state_dict().items()}


def test_every_key_but_the_auxiliary_head_maps_onto_danet(danet_r50_keys):
    state = fixture_state_dict()
    converted = convert_mmseg_danet_state_dict({"meta": META, "state_dict": state})
    assert converted.keys() == danet_r50_keys.keys()
    assert all(converted[key].shape == shape for key, shape in danet_r50_keys.items())
    kept = [key for key in state if not key.startswith("auxiliary_head.")]
    assert len(kept) == len(converted) and len(kept) < len(state)


def test_stem_and_head_names():
    state = fixture_state_dict()
    converted = convert_mmseg_danet_state_dict(state)
    pairs = {
        "backbone.stem.0.weight": "backbone.conv1.0.weight",
        "backbone.stem.4.running_mean": "backbone.conv1.4.running_mean",
        "backbone.stem.6.weight": "backbone.conv1.6.weight",
        "backbone.stem.7.bias": "backbone.bn1.bias",
        "decode_head.pam.query_project.weight": "head.attention.pam.query_conv.weight",
        "decode_head.pam.value_project.bias": "head.attention.pam.value_conv.bias",
        "decode_head.cam_out_conv.bn.running_var": "head.attention.cam_out.norm.running_var",
        "decode_head.pam_conv_seg.weight": "head.pam_classifier.conv.weight",
        "decode_head.conv_seg.bias": "head.fused_classifier.conv.bias",
    }
    for theirs, ours in pairs.items():
        assert converted[ours] is state[theirs], theirs
    assert converted["head.attention.cam.gamma"].shape == (1,)
    assert converted["head.attention.cam.gamma"].item() == state["decode_head.cam.gamma.scale"]


def test_depth_and_classes_come_from_the_weights():
    state = fixture_state_dict()
    assert mmseg_backbone_name(state) == "resnet50c" and mmseg_num_classes(state) == 19


def test_read_checkpoint_file_meta_and_prefix(tmp_path):
    torch.save(fixture_checkpoint(), tmp_path / "wrapped.pth")
    state, meta = read_mmseg_checkpoint(tmp_path / "wrapped.pth")
    assert meta["CLASSES"] == META["CLASSES"] and meta["iter"] == 80000
    assert torch.equal(state["decode_head.conv_seg.weight"],
                       fixture_state_dict()["decode_head.conv_seg.weight"])  # fmt: skip
    bare = {"module.backbone.stem.0.weight": torch.zeros(1)}
    assert read_mmseg_checkpoint(bare) == (
        {"backbone.stem.0.weight": bare["module.backbone.stem.0.weight"]},
        {},
    )


def test_a_file_holding_something_else(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"holds a list, expected a state dict"):
        read_mmseg_checkpoint(tmp_path / "list.pth")

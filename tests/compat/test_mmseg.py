"""mmseg's DANet and CCNet tables: each fixture key lands on a key of its shape; reading files."""

import pytest
import torch

from attnblocks.compat import (
    MMSEG_CCNET,
    MMSEG_DANET,
    convert_mmseg_danet_state_dict,
    mmseg_backbone_name,
    mmseg_num_classes,
    read_mmseg_checkpoint,
)
from attnblocks.models import CCNet, DANet
from tests.compat.mmseg_reference import (
    CCNET,
    DANET,
    META,
    fixture_checkpoint,
    fixture_state_dict,
)

# Per fixture: the model, its table, some of its keys -> ours, and its 0-d gamma -> ours.
CASES = {
    DANET: (DANet, MMSEG_DANET, {
        "backbone.stem.0.weight": "backbone.conv1.0.weight",
        "backbone.stem.4.running_mean": "backbone.conv1.4.running_mean",
        "backbone.stem.6.weight": "backbone.conv1.6.weight",
        "backbone.stem.7.bias": "backbone.bn1.bias",
        "decode_head.pam.query_project.weight": "head.attention.pam.query_conv.weight",
        "decode_head.pam.value_project.bias": "head.attention.pam.value_conv.bias",
        "decode_head.cam_out_conv.bn.running_var": "head.attention.cam_out.norm.running_var",
        "decode_head.pam_conv_seg.weight": "head.pam_classifier.conv.weight",
        "decode_head.conv_seg.bias": "head.fused_classifier.conv.bias",
    }, ("decode_head.cam.gamma.scale", "head.attention.cam.gamma")),
    CCNET: (CCNet, MMSEG_CCNET, {
        "backbone.stem.7.running_var": "backbone.bn1.running_var",
        "decode_head.convs.0.conv.weight": "head.attention_in.conv.weight",
        "decode_head.convs.0.bn.running_var": "head.attention_in.norm.running_var",
        "decode_head.cca.query_conv.bias": "head.attention.query_conv.bias",
        "decode_head.convs.1.bn.weight": "head.attention_out.norm.weight",
        "decode_head.conv_cat.conv.weight": "head.fuse.conv.weight",
        "decode_head.conv_seg.bias": "head.classifier.conv.bias",
    }, ("decode_head.cca.gamma.scale", "head.attention.gamma")),
}  # fmt: skip


@pytest.mark.parametrize("fixture", sorted(CASES))
def test_every_key_but_the_auxiliary_head_maps_onto_the_model(fixture):
    model_class, key_map, _, _ = CASES[fixture]
    with torch.device("meta"):  # shapes only: no memory, no init
        expected = {
            key: value.shape for key, value in model_class("resnet50c").state_dict().items()
        }
    state = fixture_state_dict(fixture)
    converted = key_map.convert(state)
    assert {key: value.shape for key, value in converted.items()} == expected
    kept = [key for key in state if not key.startswith("auxiliary_head.")]
    assert len(kept) == len(converted) and len(kept) < len(state)


def test_the_danet_function_unwraps_a_checkpoint():
    state = fixture_state_dict()
    converted = convert_mmseg_danet_state_dict({"meta": META, "state_dict": state})
    assert converted.keys() == MMSEG_DANET.convert(state).keys()


@pytest.mark.parametrize("fixture", sorted(CASES))
def test_stem_and_head_names(fixture):
    _, key_map, pairs, (their_gamma, our_gamma) = CASES[fixture]
    state = fixture_state_dict(fixture)
    converted = key_map.convert(state)
    for theirs, ours in pairs.items():
        assert converted[ours] is state[theirs], theirs
    assert converted[our_gamma].shape == (1,)
    assert converted[our_gamma].item() == state[their_gamma]


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


def test_a_key_with_and_without_module_prefix_is_refused():
    # DataParallel's "module." stripped would make the later key silently win
    clash = {"decode_head.conv_seg.weight": torch.zeros(2, 3, 1, 1),
             "module.decode_head.conv_seg.weight": torch.ones(2, 3, 1, 1)}  # fmt: skip
    with pytest.raises(ValueError, match=r"both 'decode_head\.conv_seg\.weight' and "
                                         r"'module\.decode_head\.conv_seg\.weight'"):  # fmt: skip
        read_mmseg_checkpoint({"meta": {}, "state_dict": clash})
    with pytest.raises(ValueError, match=r"DANet\.from_mmseg: the checkpoint holds both"):
        DANet.from_mmseg(clash)

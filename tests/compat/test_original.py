"""Key conversion of the authors' checkpoints."""

import pytest
import torch

from attnblocks.compat import convert_original_head_state_dict, convert_original_state_dict
from attnblocks.models import DANet, DANetHead
from tests.reference import fill_rule_state_dict


def test_every_head_key_maps_onto_ours():
    converted = convert_original_head_state_dict(fill_rule_state_dict("head"))
    ours = DANetHead(256, 7).state_dict()
    assert set(converted) == set(ours)
    assert all(converted[key].shape == ours[key].shape for key in ours)


def test_tensors_pass_through_unchanged():
    original = fill_rule_state_dict("head")
    converted = convert_original_head_state_dict(original)
    assert converted["attention.pam.gamma"] is original["sa.gamma"]
    assert converted["fused_classifier.conv.weight"] is original["conv8.1.weight"]
    assert converted["pam_classifier.conv.bias"] is original["conv6.1.bias"]
    assert converted["attention.cam_in.norm.running_var"] is original["conv5c.1.running_var"]


def test_unknown_key_is_named():
    state = fill_rule_state_dict("head")
    state["conv9.1.weight"] = torch.zeros(1)
    with pytest.raises(
        ValueError, match=r"not part of the authors' DANetHead: \['conv9.1.weight'\]"
    ):
        convert_original_head_state_dict(state)


def test_missing_key_is_reported_by_strict_loading():
    state = fill_rule_state_dict("head")
    del state["sa.key_conv.bias"]
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*attention.pam.key_conv.bias"):
        DANetHead(256, 7).load_state_dict(convert_original_head_state_dict(state))


# --- the whole DANet -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def original_resnet50():
    """An authors'-layout DANet-ResNet50 checkpoint (fill-rule weights of the fixture)."""
    return fill_rule_state_dict("danet_resnet50")


def build(checkpoint, **kwargs):
    return DANet.from_original(checkpoint, backbone="resnet50", num_classes=19, **kwargs)


def test_full_conversion_maps_backbone_and_head(original_resnet50):
    converted = convert_original_state_dict(original_resnet50)
    assert (
        converted["backbone.layer4.2.conv3.weight"]
        is original_resnet50["pretrained.layer4.2.conv3.weight"]
    )
    assert converted["head.attention.cam.gamma"] is original_resnet50["head.sc.gamma"]
    assert len(converted) == len(original_resnet50)


def test_wrapped_checkpoint_with_module_prefix_stale_fc_and_no_batch_counters(original_resnet50):
    state = {
        f"module.{key}": value
        for key, value in original_resnet50.items()
        if not key.endswith("num_batches_tracked")
    }
    state["module.pretrained.fc.weight"] = torch.zeros(1000, 2048)
    state["module.pretrained.fc.bias"] = torch.zeros(1000)
    model = build({"state_dict": state, "epoch": 240})
    reference = build(original_resnet50)
    for (name, ours), theirs in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(ours, theirs), name


def test_loads_from_a_file(tmp_path, original_resnet50):
    torch.save({"state_dict": original_resnet50}, tmp_path / "danet.pth.tar")
    model = build(tmp_path / "danet.pth.tar")
    torch.testing.assert_close(
        model.head.attention.pam.query_conv.weight, original_resnet50["head.sa.query_conv.weight"]
    )


def test_missing_key_is_listed(original_resnet50):
    state = dict(original_resnet50)
    del state["pretrained.layer2.1.bn2.running_var"]
    with pytest.raises(
        ValueError, match=r"missing keys \(1\): \['backbone.layer2.1.bn2.running_var'\]"
    ):
        build(state)


def test_unexpected_keys_are_listed(original_resnet50):
    state = dict(original_resnet50)
    state["pretrained.layer5.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(
        ValueError, match=r"unexpected keys \(1\): \['backbone.layer5.0.conv1.weight'\]"
    ):
        build(state)
    state = dict(original_resnet50)
    state["auxlayer.conv5.0.weight"] = torch.zeros(1)
    with pytest.raises(
        ValueError, match=r"not part of the authors' DANet: \['auxlayer.conv5.0.weight'\]"
    ):
        build(state)


def test_wrong_configuration_reports_shape_mismatches(original_resnet50):
    with pytest.raises(ValueError, match=r"shape mismatches: \['head.fused_classifier.conv.weight"):
        DANet.from_original(original_resnet50, backbone="resnet50", num_classes=21)


class Trainer:
    """An arbitrary object, as some training scripts pickle into their checkpoints."""


def test_checkpoint_with_non_tensor_objects_gets_a_clear_error(tmp_path, original_resnet50):
    torch.save({"state_dict": original_resnet50, "trainer": Trainer()}, tmp_path / "danet.pth")
    with pytest.raises(ValueError, match=r"holds objects besides tensors.*weights_only=False"):
        build(tmp_path / "danet.pth")

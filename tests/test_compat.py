"""Key conversion of the authors' checkpoints."""

import pytest
import torch

from attnblocks.compat import convert_original_head_state_dict
from attnblocks.models import DANetHead
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

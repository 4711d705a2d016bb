"""Checks every ``Model.from_mmseg`` test runs: outputs against a fixture, keys that land
where they should for any depth and class count, errors that name the offending key."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from attnblocks.models import main_logits
from tests.compat.mmseg_reference import fixture_arrays, fixture_state_dict, mmseg_state_dict
from tests.reference import relative_error


def run_with_head_output(model: torch.nn.Module, images: Tensor) -> tuple:
    """The model's output and its head's (pre-upsampling) output, caught by a hook."""
    seen = []
    handle = model.head.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        out = model(images)
    handle.remove()
    return out, seen[0]


def assert_reproduces_fixture(
    model: torch.nn.Module, fixture: str, head_keys: Callable[[object], list[tuple[Tensor, str]]]
) -> None:
    """``model`` gives the fixture's ``seg_logits`` and head outputs (``head_keys(head_out)``:
    the ``(tensor, array name)`` pairs of the head's output), shapes equal and relative L2
    errors below 1e-4."""
    arrays = fixture_arrays(fixture)
    out, head = run_with_head_output(model, arrays["input"])
    for ours, key in [(main_logits(out), "seg_logits"), *head_keys(head)]:
        assert ours.shape == arrays[key].shape, key
        assert relative_error(ours, arrays[key]) < 1e-4, key


def assert_strict_error(model_class, fixture: str, change, message: str) -> None:
    """``change`` applied to the fixture's state dict makes ``from_mmseg`` raise ``message``."""
    state = fixture_state_dict(fixture)
    change(state)
    with pytest.raises(ValueError, match=message):
        model_class.from_mmseg({"meta": {}, "state_dict": state})


def assert_loads_depth_and_classes(
    model_class, fixture: str, layer3_blocks: int, backbone: str, num_classes: int,
    classifier: str,
) -> None:  # fmt: skip
    """A checkpoint with ``layer3_blocks`` blocks and ``num_classes`` classes loads into a
    ``backbone`` model: backbone, stem and classifier (our key ``classifier``) land right."""
    state = mmseg_state_dict(fixture, layer3_blocks, num_classes)
    model = model_class.from_mmseg(state)
    assert model.backbone_name == backbone and model.num_classes == num_classes
    loaded = model.state_dict()
    last = f"layer3.{layer3_blocks - 1}.conv2.weight"
    assert torch.equal(loaded[f"backbone.{last}"], state[f"backbone.{last}"])
    assert torch.equal(loaded["backbone.bn1.running_var"], state["backbone.stem.7.running_var"])
    assert torch.equal(loaded[classifier], state["decode_head.conv_seg.weight"])
    expected_dataset = "ade20k" if num_classes == 150 else None
    assert model.pretrained_config.dataset == expected_dataset
    with torch.no_grad():
        assert main_logits(model(torch.randn(1, 3, 17, 23))).shape == (1, num_classes, 17, 23)

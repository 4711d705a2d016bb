"""The fixtures of mmseg's NLNet, GCNet, DNLNet and PSANet as released checkpoints, and the
checks each model's from_mmseg test runs on them.

A released checkpoint (mmseg 0.x) is ``{"meta": {"config": <the config as Python text>,
"CLASSES": ..., ...}, "state_dict": ...}``; :func:`fixture_checkpoint` writes the
fixture's decode head settings (``zoo_manifest.json``) into such a config text, so that
the meta route of ``attnblocks.models.from_mmseg`` reads a real head type and settings.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from attnblocks.models import from_mmseg
from tests.compat.mmseg_reference import (
    META,
    fixture_config,
    fixture_state_dict,
    mmseg_keys,
)
from tests.models.mmseg_checks import assert_reproduces_fixture

NLNET, GCNET, DNLNET, PSANET = "mmseg_nlnet", "mmseg_gcnet", "mmseg_dnlnet", "mmseg_psanet"
# PSAHead's bias-free convolutions to the mask's cells: h_m * w_m rows
PSA_MASK_CONVS = ("decode_head.attention.1.weight", "decode_head.attention_p.1.weight")


def head_output(head: Tensor) -> list:
    """The head's logits at 1/8 resolution and their name in the zoo fixtures."""
    return [(head, "head.out")]


def config_text(name: str, **head_settings) -> str:
    """The fixture's model config as mmseg writes it into a checkpoint (Python source),
    its decode head's settings updated with ``head_settings``."""
    entry = fixture_config(name)
    head = {**entry["decode_head"], **head_settings}
    return (
        f"norm_cfg = dict(type='SyncBN', requires_grad=True)\n"
        f"model = dict(type='EncoderDecoder', pretrained='open-mmlab://resnet50_v1c', "
        f"backbone={entry['backbone']!r}, decode_head={head!r}, "
        f"auxiliary_head=dict(type='FCNHead', in_channels=1024, in_index=2, channels=256))\n"
        f"crop_size = (512, 1024)\n"
    )


def fixture_meta(name: str, **head_settings) -> dict:
    """A released checkpoint's meta: mmseg's version, the config text, classes, iterations."""
    return {**META, "config": config_text(name, **head_settings)}


def fixture_checkpoint(name: str, **head_settings) -> dict:
    """The fixture's weights (``auxiliary_head.*`` included) with a release's meta."""
    return {"meta": fixture_meta(name, **head_settings), "state_dict": fixture_state_dict(name)}


def release_state_dict(
    name: str, layer3_blocks: int, num_classes: int, mask_size: int | None = None
) -> dict[str, Tensor]:
    """Random weights with the keys of a release: ``layer3_blocks`` (23: R-101),
    ``num_classes`` (150: ADE20K, 21: VOC) and, for PSANet, square masks of ``mask_size``."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in mmseg_keys(name, layer3_blocks, num_classes):
        if key in PSA_MASK_CONVS and mask_size is not None:
            shape = [mask_size * mask_size, *shape[1:]]
        state[key] = torch.randn(shape, generator=generator)
    return state


def assert_reproduces_through_from_mmseg(checkpoint, name: str, expected_class: type) -> None:
    """``attnblocks.models.from_mmseg`` picks ``expected_class`` and reproduces the fixture."""
    model = from_mmseg(checkpoint)
    assert type(model) is expected_class and not model.training
    assert_reproduces_fixture(model, name, head_output)


def assert_loads_release_shapes(model_class, name: str, layer3_blocks: int, num_classes: int,
                                mask_size: int | None = None):  # fmt: skip
    """A release-shaped checkpoint loads: backbone depth, classes (and PSA mask) inferred,
    its weights where they belong, logits at the input size."""
    state = release_state_dict(name, layer3_blocks, num_classes, mask_size)
    model = model_class.from_mmseg(state)
    assert model.backbone_name == ("resnet101c" if layer3_blocks == 23 else "resnet50c")
    assert model.num_classes == num_classes
    loaded = model.state_dict()
    last = f"layer3.{layer3_blocks - 1}.conv2.weight"
    assert torch.equal(loaded[f"backbone.{last}"], state[f"backbone.{last}"])
    assert torch.equal(loaded["head.classifier.conv.weight"], state["decode_head.conv_seg.weight"])
    dataset = {150: "ade20k", 21: "voc", 19: "cityscapes"}[num_classes]
    assert model.pretrained_config.dataset == dataset
    with torch.no_grad():
        assert model(torch.randn(1, 3, 17, 23)).shape == (1, num_classes, 17, 23)
    return model, state


def renamed(state: dict[str, Tensor], pattern: str, replacement: str) -> dict[str, Tensor]:
    """``state`` with ``pattern`` replaced in every key (a regex)."""
    return {re.sub(pattern, replacement, key): value for key, value in state.items()}

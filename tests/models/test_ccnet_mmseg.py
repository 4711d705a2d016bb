"""CCNet.from_mmseg: mmsegmentation's CCNet reproduced, strict loading, depths and class counts.

The scaffold's checks that do not depend on the model (refused backbones, files with
objects, missing files) are tests/models/test_danet_mmseg.py's.
"""

import pytest
import torch

from attnblocks.models import CCNet, DANet, base
from tests.compat.mmseg_reference import CCNET, fixture_checkpoint
from tests.models.mmseg_checks import (
    assert_loads_depth_and_classes,
    assert_reproduces_fixture,
    assert_strict_error,
)


def head_output(head: torch.Tensor) -> list:
    """CCHead's logits at 1/8 resolution and their name in the fixture."""
    return [(head, "head.head")]


def test_reproduces_mmseg_from_a_file(tmp_path):
    path = tmp_path / "ccnet_r50-d8_fixture.pth"
    torch.save(fixture_checkpoint(CCNET), path)  # {"meta", "state_dict"}, auxiliary_head.* included
    model = CCNet.from_mmseg(path)
    assert not model.training and model.backbone_name == "resnet50c"
    assert model.output_stride == 8 and not model.align_corners
    assert model.head.attention.recurrence == 2 and model.num_classes == 19
    assert model.pretrained_config.dataset == "cityscapes"
    assert_reproduces_fixture(model, CCNET, head_output)


def test_reproduces_mmseg_from_a_dict():
    assert_reproduces_fixture(CCNet.from_mmseg(fixture_checkpoint(CCNET)), CCNET, head_output)


def test_a_release_name_downloads_and_sets_window_and_alignment(monkeypatch):
    fetched = []
    monkeypatch.setattr(base, "load_mmseg_checkpoint",
                        lambda name: fetched.append(name) or fixture_checkpoint(CCNET))  # fmt: skip
    name = "ccnet_r50-d8_4xb2-40k_cityscapes-769x769"
    model = CCNet.from_mmseg(name, recurrence=1)
    assert fetched == [name]
    assert model.align_corners and model.pretrained_config.crop_size == (769, 769)
    assert model.head.attention.recurrence == 1  # keywords reach the constructor


@pytest.mark.parametrize(
    "model_class, name",
    [(DANet, "ccnet_r101-d8_4xb4-80k_ade20k-512x512"),
     (CCNet, "danet_r50-d8_512x1024_80k_cityscapes_20200607_133029-2bfa2293.pth")],
)  # fmt: skip
def test_another_models_release_is_refused_before_any_download(model_class, name, monkeypatch):
    monkeypatch.setattr(base, "load_mmseg_checkpoint", lambda name: pytest.fail("downloaded"))
    family = name.split("_", 1)[0]
    with pytest.raises(ValueError, match=f"release of mmseg's '{family}' models; "
                                         f"{model_class.__name__}.from_mmseg loads"):  # fmt: skip
        model_class.from_mmseg(name)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("decode_head.cca.gamma.scale"),
         r"missing keys \(1\): \['head.attention.gamma'\]"),
        (lambda s: s.pop("decode_head.conv_cat.bn.running_mean"),
         r"missing keys \(1\): \['head.fuse.norm.running_mean'\]"),
        (lambda s: s.update({"decode_head.convs.2.conv.weight": torch.zeros(1)}),
         r"not part of mmsegmentation's CCNet.*\['decode_head.convs.2.conv.weight'\]"),
        (lambda s: s.update({"decode_head.cca.gamma.weight": torch.zeros(1)}),
         r"not part of mmsegmentation's CCNet.*\['decode_head.cca.gamma.weight'\]"),
        (lambda s: s.update({"decode_head.convs.1.conv.weight": torch.zeros(512, 512, 1, 1)}),
         r"shape mismatches: \['head.attention_out.conv.weight: checkpoint \(512, 512, 1, 1\), "
         r"model \(512, 512, 3, 3\)'\]"),
    ],
    ids=["gamma-missing", "norm-missing", "stray-conv", "stray-gamma-key", "wrong-shape"],
)  # fmt: skip
def test_strict_loading_names_what_does_not_fit(change, message):
    assert_strict_error(CCNet, CCNET, change, message)


@pytest.mark.parametrize(
    "layer3_blocks, backbone, num_classes", [(6, "resnet50c", 7), (23, "resnet101c", 150)]
)
def test_both_depths_and_any_class_count_load(layer3_blocks, backbone, num_classes):
    assert_loads_depth_and_classes(CCNet, CCNET, layer3_blocks, backbone, num_classes,
                                   classifier="head.classifier.conv.weight")  # fmt: skip

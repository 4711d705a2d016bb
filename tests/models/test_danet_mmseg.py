"""DANet.from_mmseg: mmsegmentation's DANet reproduced, strict loading, depths and class counts."""

import pytest
import torch

from attnblocks.models import DANet, DANetOutput, base
from attnblocks.pretrained import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from tests.compat.mmseg_reference import DANET, fixture_checkpoint, fixture_state_dict
from tests.models.mmseg_checks import (
    assert_loads_depth_and_classes,
    assert_reproduces_fixture,
    assert_strict_error,
)


def head_outputs(head: DANetOutput) -> list:
    """DANet's three head logit maps and their names in the fixture."""
    assert isinstance(head, DANetOutput)
    return [(head.out, "head.pam_cam"), (head.pam, "head.pam"), (head.cam, "head.cam")]


@pytest.fixture(scope="module")
def loaded_from_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mmseg") / "danet_r50-d8_fixture.pth"
    torch.save(fixture_checkpoint(), path)  # {"meta", "state_dict"}, auxiliary_head.* included
    return DANet.from_mmseg(path)


def test_reproduces_mmseg_from_a_file(loaded_from_file):
    model = loaded_from_file
    assert not model.training  # ready for inference, like from_pretrained
    assert model.backbone_name == "resnet50c" and model.output_stride == 8
    assert not model.align_corners  # mmseg's resize of the logits
    assert_reproduces_fixture(model, DANET, head_outputs)


def test_reproduces_mmseg_from_a_dict():
    assert_reproduces_fixture(DANet.from_mmseg(fixture_checkpoint()), DANET, head_outputs)


def test_pretrained_config_carries_cityscapes_classes_and_palette(loaded_from_file):
    config = loaded_from_file.pretrained_config
    assert config.class_names == CITYSCAPES_CLASSES and config.palette == CITYSCAPES_PALETTE
    assert config.mean == (123.675, 116.28, 103.53) and config.std == (58.395, 57.12, 57.375)
    assert config.dataset == "cityscapes" and config.image_scale == (2048, 1024)


def test_a_release_name_downloads_and_sets_window_and_alignment(monkeypatch):
    fetched = []
    monkeypatch.setattr(base, "load_mmseg_checkpoint",
                        lambda name: fetched.append(name) or fixture_checkpoint())  # fmt: skip
    name = "danet_r50-d8_4xb2-80k_cityscapes-769x769"
    model = DANet.from_mmseg(name, attention_backend="chunked")
    assert fetched == [name]
    assert model.align_corners  # the 769x769 models were trained with align_corners=True
    assert model.pretrained_config.crop_size == (769, 769)
    assert model.pretrained_config.stride == (513, 513)
    assert model.head.attention.pam.backend == "chunked"  # keywords reach the constructor


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("backbone.layer2.1.bn2.running_var"),
         r"missing keys \(1\): \['backbone.layer2.1.bn2.running_var'\]"),
        (lambda s: s.pop("decode_head.pam.query_project.bias"),
         r"missing keys \(1\): \['head.attention.pam.query_conv.bias'\]"),
        (lambda s: s.update({"backbone.layer4.0.conv4.weight": torch.zeros(1)}),
         r"unexpected keys \(1\): \['backbone.layer4.0.conv4.weight'\]"),
        (lambda s: s.update({"decode_head.stray.weight": torch.zeros(1)}),
         r"not part of mmsegmentation's DANet.*\['decode_head.stray.weight'\]"),
        (lambda s: s.update({"neck.conv.weight": torch.zeros(1)}),
         r"not part of mmsegmentation's DANet.*\['neck.conv.weight'\]"),
        (lambda s: s.update({"decode_head.cam_in_conv.conv.weight": torch.zeros(512, 2048, 1, 1)}),
         r"shape mismatches: \['head.attention.cam_in.conv.weight: checkpoint \(512, 2048, 1, 1\), "
         r"model \(512, 2048, 3, 3\)'\]"),
    ],
    ids=["backbone-key-missing", "head-key-missing", "stray-backbone-key", "stray-head-key",
         "stray-module", "wrong-shape"],
)  # fmt: skip
def test_strict_loading_names_what_does_not_fit(change, message):
    assert_strict_error(DANet, DANET, change, message)


def test_all_problems_are_listed_in_one_error():
    state = fixture_state_dict()
    del state["decode_head.pam_out_conv.bn.weight"]
    state["backbone.layer1.0.se.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \(1\).*; unexpected keys \(1\)"):
        DANet.from_mmseg(state)


@pytest.mark.parametrize(
    "layer3_blocks, backbone, num_classes", [(6, "resnet50c", 7), (23, "resnet101c", 150)]
)
def test_both_depths_and_any_class_count_load(layer3_blocks, backbone, num_classes):
    assert_loads_depth_and_classes(DANet, DANET, layer3_blocks, backbone, num_classes,
                                   classifier="head.fused_classifier.conv.weight")  # fmt: skip


@pytest.mark.parametrize(
    "change, found",
    [
        (lambda s: s.update({f"backbone.layer3.{i}.conv1.weight": torch.zeros(1)
                             for i in range(6, 36)}), r"\(3, 4, 36, 3\)"),  # ResNetV1c-152
        (lambda s: s.update({"backbone.conv1.weight": s.pop("backbone.stem.0.weight")}),
         "no deep stem"),  # ResNetV1b: a 7x7 conv1
        (lambda s: [s.pop(k) for k in list(s) if k.startswith("backbone.layer1.") and "conv3" in k],
         "no bottleneck blocks"),  # basic blocks (ResNet-18/34)
    ],
    ids=["depth-152", "plain-stem", "basic-blocks"],
)  # fmt: skip
def test_a_backbone_that_is_neither_50_nor_101_is_refused(change, found):
    state = fixture_state_dict()
    change(state)
    with pytest.raises(ValueError, match=f"ResNetV1c-50 or ResNetV1c-101.*{found}"):
        DANet.from_mmseg(state)


def test_not_a_segmentor_checkpoint():
    with pytest.raises(ValueError, match=r"decode_head.conv_seg.weight.*\['backbone'\]"):
        DANet.from_mmseg({"backbone.stem.0.weight": torch.zeros(1)})


class Trainer:
    """An arbitrary object, as some training scripts pickle into their checkpoints."""


def test_file_with_non_tensor_objects_gets_a_clear_error(tmp_path):
    torch.save({"state_dict": {}, "trainer": Trainer()}, tmp_path / "danet.pth")
    with pytest.raises(ValueError, match=r"weights_only=False.*DANet.from_mmseg"):
        DANet.from_mmseg(tmp_path / "danet.pth")


def test_missing_file():
    with pytest.raises(FileNotFoundError, match=r"not_there\.pth"):
        DANet.from_mmseg("not_there.pth")

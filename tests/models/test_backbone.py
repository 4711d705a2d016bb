"""timm backbones at output stride 8 and 16, multi-grid, and local weights."""

import pytest
import timm
import torch

from attnblocks.models import apply_multi_grid, create_backbone
from attnblocks.models import backbone as backbone_module

FAMILIES = [
    "resnet18",  # ResNet, basic blocks
    "resnet50s",  # ResNet, deep stem (the authors' resnet50s)
    "resnest14d",  # ResNeSt
    "regnetx_002",  # RegNet
    "mobilenetv3_small_050",  # MobileNetV3
    "efficientnet_b0",  # EfficientNet
]


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", FAMILIES)
def test_families_build_at_output_stride(name, output_stride):
    backbone = create_backbone(name, output_stride=output_stride).eval()
    assert backbone.feature_info.reduction()[-1] == output_stride
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 64, 96))[-1]
    assert features.shape[1] == backbone.feature_info.channels()[-1]
    assert features.shape[-2:] == (64 // output_stride, 96 // output_stride)


def test_multi_grid_sets_last_stage_dilations():
    backbone = create_backbone("resnet50", output_stride=8, multi_grid=(4, 8, 16))
    assert [block.conv2.dilation for block in backbone.layer4] == [(4, 4), (8, 8), (16, 16)]
    assert [block.conv2.padding for block in backbone.layer4] == [(4, 4), (8, 8), (16, 16)]
    assert backbone(torch.randn(1, 3, 40, 40))[-1].shape[-2:] == (5, 5)


def test_multi_grid_cycles_over_blocks_like_the_authors():
    backbone = create_backbone("resnet101", output_stride=16, multi_grid=(1, 2))
    assert [block.conv2.dilation[0] for block in backbone.layer4] == [1, 2, 1]


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_050"])
def test_multi_grid_rejects_backbones_without_bottleneck_layer4(name):
    with pytest.raises(ValueError, match="multi_grid applies to bottleneck ResNets"):
        create_backbone(name, multi_grid=(4, 8, 16))


def test_multi_grid_rejects_bad_dilations():
    backbone = timm.create_model("resnet50", features_only=True, output_stride=8)
    with pytest.raises(ValueError, match="multi_grid dilation must be a positive int, got 0"):
        apply_multi_grid(backbone, (4, 0, 16))
    with pytest.raises(ValueError, match="at least one dilation"):
        apply_multi_grid(backbone, ())


def test_bad_output_stride_and_unknown_model():
    with pytest.raises(ValueError, match="output_stride must be 8 or 16, got 32"):
        create_backbone("resnet18", output_stride=32)
    with pytest.raises(ValueError, match="unknown timm model 'resnet19'"):
        create_backbone("resnet19")


def test_local_weights_file_is_loaded(tmp_path):
    classifier = timm.create_model("resnet18")
    torch.save(classifier.state_dict(), tmp_path / "resnet18.pth")
    backbone = create_backbone("resnet18", weights=tmp_path / "resnet18.pth")
    torch.testing.assert_close(backbone.layer3[1].conv2.weight, classifier.layer3[1].conv2.weight)
    with pytest.raises(FileNotFoundError, match="backbone weights file not found"):
        create_backbone("resnet18", weights=tmp_path / "missing.pth")


def test_download_failure_points_to_a_local_file(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(backbone_module.timm, "create_model", offline)
    with pytest.raises(
        RuntimeError, match=r"could not fetch ImageNet weights.*backbone_weights=PATH"
    ):
        create_backbone("resnet18", pretrained=True)


def test_an_earlier_stage_can_be_taken():
    backbone = create_backbone("resnet18", output_stride=8, out_indices=(2,)).eval()
    assert backbone.feature_info.channels()[-1] == 128
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 64, 64))[-1].shape == (1, 128, 8, 8)

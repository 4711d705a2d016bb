"""timm backbones at output stride 8 and 16, multi-grid, local weights and hub failures."""

import time

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import save_file

from attnblocks.models import DANet, apply_multi_grid, create_backbone
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

    monkeypatch.setattr(backbone_module, "_hub_weights_file", lambda name: None)  # no hub probe
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


def test_weights_of_another_architecture_raise_listing_missing_and_unexpected_keys(tmp_path):
    # resnet34's layer1 has three blocks where resnet18's has two; its stem is called the same.
    torch.save(timm.create_model("resnet34").state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(ValueError, match=r"resnet34\.pth.*unexpected keys \(\d+\): \['layer1\.2\."):
        create_backbone("resnet18", weights=tmp_path / "resnet34.pth")
    renamed = {f"model.{k}": v for k, v in timm.create_model("resnet18").state_dict().items()}
    torch.save(renamed, tmp_path / "prefixed.pth")
    with pytest.raises(ValueError, match=r"missing keys \(\d+\): \['bn1\.bias'.*unexpected keys"):
        DANet("resnet18", num_classes=3, backbone_weights=tmp_path / "prefixed.pth")


def test_weights_of_the_wrong_shape_raise(tmp_path):
    state_dict = timm.create_model("resnet18").state_dict()
    state_dict["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    save_file(state_dict, tmp_path / "resnet18.safetensors")
    with pytest.raises(ValueError, match=r"shape mismatches.*layer2\.0\.conv1\.weight: file "
                       r"\(128, 64, 1, 1\), model \(128, 64, 3, 3\)"):  # fmt: skip
        create_backbone("resnet18", weights=tmp_path / "resnet18.safetensors")


def test_weights_without_classifier_or_bn_counters_load_into_any_stage(tmp_path):
    classifier = timm.create_model("resnet18")
    kept = {k: v for k, v in classifier.state_dict().items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}  # fmt: skip
    torch.save(kept, tmp_path / "resnet18.pth")
    backbone = create_backbone("resnet18", weights=tmp_path / "resnet18.pth", out_indices=(2,))
    torch.testing.assert_close(backbone.layer2[1].conv2.weight, classifier.layer2[1].conv2.weight)
    four_channels = create_backbone("resnet18", weights=tmp_path / "resnet18.pth", in_chans=4)
    assert four_channels.conv1.weight.shape[1] == 4  # timm adapts the stem to 4 input channels


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache with nothing in it; the hub is never reached through it."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_hub_offline_mode_fails_at_once_without_a_request(empty_hub_cache, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"HF_HUB_OFFLINE.*resnet18.*backbone_weights=PATH"):
        create_backbone("resnet18", pretrained=True)
    assert time.perf_counter() - started < 5


def test_unreachable_hub_fails_on_the_first_connection_error(empty_hub_cache, monkeypatch):
    # Port 9 on the loopback refuses connections: a hub that cannot be reached, no network used.
    endpoint = "http://127.0.0.1:9"
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")  # fmt: skip
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"could not fetch ImageNet weights.*127\.0\.0\.1:9.*"
                       r"backbone_weights=PATH"):  # fmt: skip
        create_backbone("resnet18", pretrained=True)
    assert time.perf_counter() - started < 5  # the hub client alone retries for 46 s


def test_hub_offline_mode_uses_weights_in_the_cache(empty_hub_cache, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    repo = timm.models.get_pretrained_cfg("resnet18").hf_hub_id  # timm/resnet18.a1_in1k
    snapshot = empty_hub_cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    classifier = timm.create_model("resnet18")
    save_file(classifier.state_dict(), snapshot / "model.safetensors")
    backbone = create_backbone("resnet18", pretrained=True)
    torch.testing.assert_close(backbone.layer4[0].conv1.weight, classifier.layer4[0].conv1.weight)

"""OCRNet on small backbones: the cascade written out, levels, gradients, sizes, export, save/load.

That OCRNet computes mmseg's OCRNet is tests/models/test_ocrnet_mmseg.py (the fixtures).
"""

import pytest
import torch
import torch.nn.functional as F

from attnblocks.models import OCRNet, OCRNetHead, OCRNetOutput
from attnblocks.models.hrnet import resize_concat


def small_ocrnet(backbone="resnet18", num_classes=5, **kwargs) -> OCRNet:
    torch.manual_seed(0)
    return OCRNet(backbone, num_classes, channels=32, ocr_channels=16, **kwargs)


@pytest.fixture(scope="module")
def resnet():
    # zero_init_last=False: timm zeroes each block's last norm, which stops gradients inside blocks.
    return small_ocrnet(backbone_kwargs={"zero_init_last": False})


@pytest.fixture(scope="module")
def hrnet():
    return small_ocrnet("hrnet_w18_small")


def test_resnet_layout_reads_layer3_and_layer4(resnet):
    head = resnet.head
    assert isinstance(head, OCRNetHead) and resnet.output_stride == 8
    assert head.in_channels == [256, 512] and not head.concat_levels
    assert head.coarse_conv.conv.weight.shape == (256, 256, 3, 3)  # mmseg: 256 wide, 3x3
    assert head.coarse_classifier.conv.weight.shape == (5, 256, 1, 1)
    assert head.bottleneck.conv.weight.shape == (32, 512, 3, 3)
    assert head.classifier.drop.p == head.coarse_classifier.drop.p == 0.1
    assert head.object_context.inter_channels == 16


def test_hrnet_layout_concatenates_the_four_branches(hrnet):
    head = hrnet.head
    assert hrnet.output_stride is None and head.concat_levels
    assert head.in_channels == [16, 32, 64, 128]  # hrnet_w18_small's branches
    assert head.coarse_conv.conv.weight.shape == (240, 240, 1, 1)  # mmseg: concatenated, 1x1
    assert head.bottleneck.conv.weight.shape == (32, 240, 3, 3)
    assert head.classifier.drop.p == head.coarse_classifier.drop.p == 0.0


@pytest.mark.parametrize("concat_levels", [False, True])
def test_the_head_is_the_cascade_written_out(concat_levels):
    torch.manual_seed(0)
    in_channels = [8, 12] if not concat_levels else [8, 12, 6]
    head = OCRNetHead(in_channels, 3, channels=16, ocr_channels=8, concat_levels=concat_levels)
    head.eval()
    sizes = [(9, 7), (9, 7)] if not concat_levels else [(9, 7), (5, 4), (3, 2)]
    features = [torch.randn(2, c, *size) for c, size in zip(in_channels, sizes)]
    with torch.no_grad():
        out = head(features)
        if concat_levels:
            x_coarse = x = resize_concat(features)
        else:
            x_coarse, x = features
        coarse = head.coarse_classifier(head.coarse_conv(x_coarse))
        pixels = head.bottleneck(x)
        regions = head.gather(pixels, coarse)  # from the coarse logits, not detached
        expected = head.classifier(head.object_context(pixels, regions))
    assert isinstance(out, OCRNetOutput)
    torch.testing.assert_close(out.coarse, coarse)
    torch.testing.assert_close(out.out, expected)


@pytest.mark.parametrize("size", [(33, 47), (17, 9)])
def test_both_logits_at_any_input_size(resnet, hrnet, size):
    for model in (resnet, hrnet):
        model.eval()
        with torch.no_grad():
            out = model(torch.randn(2, 3, *size))
        assert isinstance(out, OCRNetOutput)
        assert out.out.shape == out.coarse.shape == (2, 5, *size)


def test_predict_uses_the_ocr_logits(hrnet):
    images = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        expected = hrnet.eval()(images).out.argmax(dim=1)
    assert torch.equal(hrnet.predict(images), expected)


@pytest.mark.parametrize("name", ["resnet", "hrnet"])
def test_every_parameter_gets_a_gradient_from_both_losses(name, request):
    model = request.getfixturevalue(name).train()
    images = torch.randn(2, 3, 32, 40)
    target = torch.randint(0, 5, (2, 32, 40))
    target[:, :4] = 255  # void pixels
    model.zero_grad()
    out = model(images)
    loss = F.cross_entropy(out.out, target, ignore_index=255)
    loss = loss + 0.4 * F.cross_entropy(out.coarse, target, ignore_index=255)  # mmseg's weights
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name
    model.zero_grad()
    F.cross_entropy(model(images).out, target, ignore_index=255).backward()
    coarse_grad = model.head.coarse_classifier.conv.weight.grad
    assert coarse_grad is not None and coarse_grad.abs().sum() > 0  # through the regions


def test_output_stride_16_and_bad_arguments():
    model = small_ocrnet(output_stride=16).eval()
    seen = []
    model.head.register_forward_pre_hook(lambda module, args: seen.extend(args[0]))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 32))
    assert [tuple(t.shape[-2:]) for t in seen] == [(4, 2), (4, 2)]
    with pytest.raises(ValueError, match=r"'hrnet_w18_small' is an HRNet.*output_stride=None"):
        OCRNet("hrnet_w18_small", output_stride=8)
    with pytest.raises(ValueError, match=r"reads two feature maps.*got in_channels \[8, 8, 8\]"):
        OCRNetHead([8, 8, 8], 3)
    head = OCRNetHead([8, 12], 3, channels=16, ocr_channels=8)
    with pytest.raises(ValueError, match=r"built for 2 maps of channels \[8, 12\], got shapes"):
        head([torch.randn(1, 8, 5, 5)])
    with pytest.raises(ValueError, match="two levels must share a size"):
        head([torch.randn(1, 8, 5, 5), torch.randn(1, 12, 3, 3)])


def test_torch_export_of_hrnets_bilinear_fusion(hrnet):
    """The fusion that replaces timm's (hrnet.py) exports; the OCR blocks' export is tested
    with them (tests/layers/test_object_context.py)."""
    fusion = hrnet.backbone.stage4[0].eval()  # four branches, odd sizes: resized after upsampling
    gen = torch.Generator().manual_seed(1)
    sizes = [(11, 15), (6, 8), (3, 4), (2, 2)]
    branches = [
        torch.randn(1, c, *size, generator=gen) for c, size in zip((16, 32, 64, 128), sizes)
    ]
    with torch.no_grad():
        expected = fusion(list(branches))
        exported = torch.export.export(fusion, (list(branches),)).module()(list(branches))
    for ours, reference in zip(exported, expected):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_save_and_load_pretrained_round_trip(hrnet, tmp_path):
    pytest.importorskip("huggingface_hub", reason="save_pretrained needs the hub extra")
    hrnet.eval()
    hrnet.save_pretrained(tmp_path)
    loaded = OCRNet.from_pretrained(tmp_path).eval()
    assert loaded.backbone_name == "hrnet_w18_small" and loaded.output_stride is None
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).out, hrnet(images).out)

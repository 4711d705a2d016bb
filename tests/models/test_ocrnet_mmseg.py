"""OCRNet.from_mmseg: mmseg's OCRNet on ResNetV1c-101 and HRNetV2-W18 reproduced (both heads of
the cascade), strict loading, backbones, widths and classes read from the weights.

The R-101 model is built once (heavy on a small machine): from a ``{"meta", "state_dict"}`` file
through ``attnblocks.models.from_mmseg``. The HRNet-W18 one from a file through
``OCRNet.from_mmseg`` and from the bare state dict through ``attnblocks.models.from_mmseg``.
"""

import re

import pytest
import timm
import torch

from attnblocks.models import OCRNet, OCRNetOutput, base, from_mmseg, mmseg_model_class
from tests.compat.mmseg_reference import fixture_checkpoint, fixture_config, fixture_state_dict
from tests.models.mmseg_checks import assert_reproduces_fixture, assert_strict_error

R101, HR18 = "mmseg_ocrnet_r101", "mmseg_ocrnet_hr18"


def head_outputs(head: OCRNetOutput) -> list:
    """The OCR head's and the FCN head's logits at feature resolution, and their fixture names."""
    assert isinstance(head, OCRNetOutput)
    return [(head.out, "head.out"), (head.coarse, "head0.out")]


# The config text of an OCRNet release's meta, as mmseg writes it (shortened; read as data).
CONFIG = ("model = dict(type='CascadeEncoderDecoder', num_stages=2, decode_head=[\n"
          "    dict(type='FCNHead', num_convs=1, concat_input=False),\n"
          "    dict(type='OCRHead', channels=512, ocr_channels=256)])\n")  # fmt: skip


def saved(fixture, tmp_path_factory):
    """The fixture's weights saved as mmseg releases them: a ``{"meta", "state_dict"}`` file."""
    checkpoint = fixture_checkpoint(fixture)
    checkpoint["meta"]["config"] = CONFIG
    path = tmp_path_factory.mktemp("mmseg") / f"{fixture}.pth"
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def r101(tmp_path_factory):
    """The one R-101 build of the module: from a file, through attnblocks.models.from_mmseg."""
    return from_mmseg(saved(R101, tmp_path_factory))


@pytest.fixture(scope="module")
def hr18(tmp_path_factory):
    return OCRNet.from_mmseg(saved(HR18, tmp_path_factory))


def test_r101_reproduces_mmseg_from_a_file_through_models_from_mmseg(r101):
    assert type(r101) is OCRNet and not r101.training and not r101.align_corners
    assert r101.backbone_name == "resnet101c" and r101.output_stride == 8
    assert r101.num_classes == 19 and r101.pretrained_config.dataset == "cityscapes"
    assert r101.head.coarse_conv.conv.weight.shape == (256, 1024, 3, 3)  # on layer3
    assert r101.head.bottleneck.conv.weight.shape == (512, 2048, 3, 3)  # on layer4
    assert r101.head.classifier.drop.p == 0.1
    assert_reproduces_fixture(r101, R101, head_outputs)


def test_hr18_reproduces_mmseg_from_a_file(hr18):
    assert not hr18.training and not hr18.align_corners and hr18.num_classes == 19
    assert hr18.backbone_name == "hrnet_w18" and hr18.output_stride is None
    assert hr18.head.coarse_conv.conv.weight.shape == (270, 270, 1, 1)  # 18+36+72+144, 1x1
    assert hr18.head.bottleneck.conv.weight.shape == (512, 270, 3, 3)
    assert hr18.head.classifier.drop.p == 0.0 and hr18.pretrained_config.dataset == "cityscapes"
    assert_reproduces_fixture(hr18, HR18, head_outputs)


def test_hr18_reproduces_mmseg_from_a_bare_state_dict_through_models_from_mmseg():
    model = from_mmseg(fixture_state_dict(HR18))  # the class from the keys: no meta
    assert type(model) is OCRNet
    assert_reproduces_fixture(model, HR18, head_outputs)


def test_both_outputs_are_upsampled_to_the_input(hr18):
    with torch.no_grad():
        out = hr18(torch.randn(1, 3, 41, 27))
    assert isinstance(out, OCRNetOutput)
    assert out.out.shape == out.coarse.shape == (1, 19, 41, 27)


def test_a_release_name_and_the_meta_config_pick_ocrnet(monkeypatch):
    fetched = []
    monkeypatch.setattr(base, "load_mmseg_checkpoint",
                        lambda name: fetched.append(name) or fixture_checkpoint(HR18))  # fmt: skip
    name = "ocrnet_hr18_4xb2-80k_cityscapes-512x1024"
    model = from_mmseg(name, attention_backend="chunked")
    assert type(model) is OCRNet and fetched == [name]
    assert model.head.object_context.attention.backend == "chunked"  # keywords reach the model
    config = model.pretrained_config
    assert config.crop_size is None and config.dataset == "cityscapes"
    assert mmseg_model_class({}, {"config": CONFIG}) is OCRNet  # the cascade's last head decides


def test_another_models_release_is_refused_before_any_download(monkeypatch):
    monkeypatch.setattr(base, "load_mmseg_checkpoint", lambda name: pytest.fail("downloaded"))
    with pytest.raises(ValueError, match=r"release of mmseg's 'ccnet' models; OCRNet\.from_mmseg"):
        OCRNet.from_mmseg("ccnet_r101-d8_4xb4-80k_ade20k-512x512")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("decode_head.1.object_context_block.bottleneck.bn.running_var"),
         r"missing keys \(1\): \['head.object_context.bottleneck.norm.running_var'\]"),
        (lambda s: s.pop("backbone.stage4.2.fuse_layers.0.3.1.weight"),
         r"missing keys \(1\): \['backbone.stage4.2.fuse_layers.0.3.1.weight'\]"),
        (lambda s: s.update({"decode_head.1.object_context_block.gamma": torch.zeros(1)}),
         r"not part of mmsegmentation's OCRNet.*\['decode_head.1.object_context_block.gamma'\]"),
        (lambda s: s.update({"decode_head.2.conv_seg.weight": torch.zeros(19, 512, 1, 1)}),
         r"not part of mmsegmentation's OCRNet.*\['decode_head.2.conv_seg.weight'\]"),
        (lambda s: s.update({"backbone.stem.0.weight": torch.zeros(32, 3, 3, 3)}),
         r"unexpected keys \(1\): \['backbone.conv1.0.weight'\]"),
        (lambda s: s.update({"decode_head.1.object_context_block.key_project.1.conv.weight":
                             torch.zeros(256, 256, 3, 3)}),
         r"shape mismatches: \['head.object_context.attention.key_project.1.conv.weight: "
         r"checkpoint \(256, 256, 3, 3\), model \(256, 256, 1, 1\)'\]"),
        (lambda s: s.update({"decode_head.0.conv_seg.weight": torch.zeros(7, 270, 1, 1)}),
         r"shape mismatches: \['head.coarse_classifier.conv.weight: checkpoint \(7, 270, 1, 1\)"),
    ],
    ids=["norm-missing", "fusion-missing", "stray-block-key", "third-head", "resnet-stem-on-hrnet",
         "wrong-kernel", "coarse-classes"],
)  # fmt: skip
def test_strict_loading_names_what_does_not_fit(change, message):
    assert_strict_error(OCRNet, HR18, change, message)


def test_a_checkpoint_without_the_ocr_classifier_is_named():
    state = fixture_state_dict(HR18)
    state.pop("decode_head.1.conv_seg.weight")
    with pytest.raises(ValueError, match=r"with a decode_head\.1\.conv_seg\.weight classifier"):
        OCRNet.from_mmseg(state)


# --------------------------------------------------- other backbones, widths and classes


def with_classes(keys, num_classes):
    """``[key, shape]`` with both heads' classifiers for ``num_classes`` classes."""
    classifiers = ("decode_head.0.conv_seg.", "decode_head.1.conv_seg.")
    return [[k, [num_classes, *s[1:]] if k.startswith(classifiers) else s] for k, s in keys]


def hrnet_keys(name, num_classes):
    """mmseg's OCRNet keys on timm's HRNet ``name`` (mmseg's HRNet has timm's key names, which
    the W18 fixture shows): backbone from timm's model, heads as the fixture's, widened."""
    with torch.device("meta"):
        backbone = timm.create_model(
            name, features_only=True, feature_location="", out_indices=(1, 2, 3, 4)
        )
    width = sum(backbone.feature_info.channels())  # the four branches
    keys = [[f"backbone.{k}", list(v.shape)] for k, v in backbone.state_dict().items()]
    for key, shape in fixture_config(HR18)["keys"]:
        if key.startswith("backbone."):
            continue
        if key.startswith("decode_head.0.") and shape:
            shape = [width if s == 270 else s for s in shape]
        elif key == "decode_head.1.bottleneck.conv.weight":
            shape = [512, width, 3, 3]
        keys.append([key, shape])
    return with_classes(keys, num_classes)


def random_state(keys):
    generator = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=generator) for key, shape in keys}


def meta_state(keys):
    return {key: torch.empty(shape, device="meta") for key, shape in keys}


def test_hrnet_w18_small_with_150_classes_loads_every_weight_where_it_belongs():
    state = random_state(hrnet_keys("hrnet_w18_small_v2", 150))
    model = OCRNet.from_mmseg(state)
    assert model.backbone_name == "hrnet_w18_small_v2" and model.num_classes == 150
    assert model.pretrained_config.dataset == "ade20k"
    loaded = model.state_dict()
    for ours, theirs in [
        ("backbone.stage4.1.fuse_layers.3.0.0.0.weight",) * 2,
        ("head.coarse_conv.norm.running_var", "decode_head.0.convs.0.bn.running_var"),
        ("head.object_context.attention.query_project.1.conv.weight",
         "decode_head.1.object_context_block.query_project.1.conv.weight"),
        ("head.object_context.bottleneck.norm.bias",
         "decode_head.1.object_context_block.bottleneck.bn.bias"),
        ("head.classifier.conv.weight", "decode_head.1.conv_seg.weight"),
        ("head.coarse_classifier.conv.bias", "decode_head.0.conv_seg.bias"),
    ]:  # fmt: skip
        assert torch.equal(loaded[ours], state[theirs]), ours
    with torch.no_grad():
        out = model(torch.randn(1, 3, 37, 45))
    assert out.out.shape == out.coarse.shape == (1, 150, 37, 45)


def test_hrnet_w48_widths_are_read_from_the_weights():
    options = OCRNet.mmseg_model_options(meta_state(hrnet_keys("hrnet_w48", 21)), {}, None)
    assert options["backbone"] == "hrnet_w48" and options["output_stride"] is None
    assert options["num_classes"] == 21 and options["coarse_channels"] == 720  # 48+96+192+384
    assert options["coarse_kernel_size"] == 1 and options["channels"] == 512
    assert options["ocr_channels"] == 256


def test_resnet50_with_7_classes_loads():
    """ResNetV1c-50: the R-101 keys without layer3's blocks 6..22."""
    keys = [[k, s] for k, s in fixture_config(R101)["keys"]
            if not re.match(r"backbone\.layer3\.([6-9]|1\d|2\d)\.", k)]  # fmt: skip
    state = random_state(with_classes(keys, 7))
    model = OCRNet.from_mmseg(state)
    assert model.backbone_name == "resnet50c" and model.num_classes == 7
    assert model.pretrained_config.dataset is None
    for key in ("backbone.layer3.5.conv2.weight", "backbone.bn1.running_var"):
        mmseg_key = key.replace("bn1.", "stem.7.")
        assert torch.equal(model.state_dict()[key], state[mmseg_key])


def test_the_ocr_width_is_read_from_the_weights():
    keys = {k: s for k, s in fixture_config(R101)["keys"]}
    keys["decode_head.1.object_context_block.value_project.conv.weight"] = [128, 512, 1, 1]
    options = OCRNet.mmseg_model_options(meta_state(keys.items()), {}, None)
    assert options["ocr_channels"] == 128 and options["backbone"] == "resnet101c"
    assert options["coarse_channels"] == 256 and options["coarse_kernel_size"] == 3

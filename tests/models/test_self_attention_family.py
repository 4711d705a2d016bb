"""ANNNet, ISANet and EMANet on a small backbone: logits, gradients, save/load, arguments, and
how attnblocks.models.from_mmseg recognises their checkpoints.

That they compute mmseg's models is tests/models/test_self_attention_mmseg.py (the fixtures).
"""

import json

import pytest
import torch

from attnblocks.models import MMSEG_MODELS, ANNNet, EMANet, ISANet, mmseg_model_class
from attnblocks.pretrained import MMSEG_CHECKPOINTS
from tests.compat.mmseg_reference import fixture_state_dict


def small(cls, **kwargs):
    torch.manual_seed(0)
    # zero_init_last=False: timm zeroes each block's last norm, which stops gradients inside blocks.
    sizes = {
        ANNNet: dict(channels=32, key_channels=16, key_pool_scales=(1, 2, 3)),
        ISANet: dict(channels=32, key_channels=16, down_factor=(3, 4)),
        EMANet: dict(ema_channels=32, channels=16, num_bases=8),
    }[cls]
    options = {**sizes, **kwargs}
    model = cls("resnet18", 5, backbone_kwargs={"zero_init_last": False}, **options)
    for module in model.modules():  # out projections start at zero, which stops gradients
        if hasattr(module, "out_project") and isinstance(module.out_project, torch.nn.Conv2d):
            torch.nn.init.normal_(module.out_project.weight, std=0.1)
    return model


MODELS = [ANNNet, ISANet, EMANet]
IDS = [cls.__name__ for cls in MODELS]


@pytest.fixture(scope="module")
def models():
    return {cls: small(cls).eval() for cls in MODELS}


@pytest.mark.parametrize("cls", MODELS, ids=IDS)
@pytest.mark.parametrize("size", [(33, 47), (17, 9)])
def test_logits_are_one_tensor_at_the_input_size(models, cls, size):
    with torch.no_grad():
        out = models[cls](torch.randn(2, 3, *size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("cls", MODELS, ids=IDS)
def test_every_trained_parameter_gets_a_gradient(models, cls):
    model = models[cls].train()
    try:
        model(torch.randn(2, 3, 40, 48)).square().mean().backward()
        for name, param in model.named_parameters():
            if param.requires_grad:
                assert param.grad is not None and param.grad.abs().sum() > 0, name
            else:  # EMA's in_conv feeds only the gradient-free EM, frozen as in mmseg
                assert name == "head.attention.in_conv." + name.rsplit(".", 1)[-1]
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_annnet_reads_two_levels_and_says_so_otherwise(models):
    model = models[ANNNet]
    assert model.backbone.feature_info.out_indices == (3, 4)
    assert model.head.in_channels == (256, 512)  # resnet18's layer3, layer4
    other = small(ANNNet, feature_levels=(2, 4))
    assert other.head.in_channels == (128, 512)
    with pytest.raises(ValueError, match=r"ANNNet reads two backbone levels \(low, high\)"):
        ANNNet("resnet18", 5, feature_levels=(4,))


def test_emanet_moves_its_bases_in_training_only(models):
    model = models[EMANet]
    bases = model.head.attention.bases.clone()
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 32, 32))
        assert torch.equal(model.head.attention.bases, bases)
        model.train()(torch.randn(2, 3, 32, 32))
    model.eval()
    assert not torch.equal(model.head.attention.bases, bases)
    model.head.attention.bases.copy_(bases)


@pytest.mark.parametrize(
    "cls, options",
    [
        (ANNNet, dict(key_pool_scales=(1, 2), head_dropout=0.2)),
        (ISANet, dict(down_factor=(2, 5), output_stride=16)),
        (EMANet, dict(num_stages=2, momentum=0.3)),
    ],
    ids=IDS,
)
def test_save_pretrained_and_from_pretrained(cls, options, tmp_path):
    model = small(cls, **options).eval()
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    for key, value in options.items():
        assert config[key] == (list(value) if isinstance(value, tuple) else value), key
    restored = cls.from_pretrained(tmp_path / "model")
    images = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(restored(images), model(images))
    for key, value in model.state_dict().items():  # APNB's shared key/query, EMA's bases
        assert torch.equal(restored.state_dict()[key], value), key


@pytest.mark.parametrize(
    "fixture, cls, head", [("mmseg_ann", ANNNet, "ANNHead"), ("mmseg_isanet", ISANet, "ISAHead"),
                           ("mmseg_emanet", EMANet, "EMAHead")], ids=IDS,
)  # fmt: skip
def test_from_mmseg_recognises_the_class_from_meta_config_or_keys(fixture, cls, head):
    state = fixture_state_dict(fixture)
    assert mmseg_model_class(state, {}) is cls  # from the head's keys
    other = fixture_state_dict("mmseg_ccnet")
    for meta in ({"config": f"model = dict(decode_head=dict(type='{head}', num_classes=19))"},
                 {"cfg": f"norm_cfg = dict(type='SyncBN')\nmodel = dict(type='EncoderDecoder', "
                         f"decode_head=dict(type='{head}'))"}):  # fmt: skip
        assert mmseg_model_class(other, meta) is cls  # the meta config decides first


def test_every_release_of_the_family_has_its_class():
    counts = {"annnet": 0, "isanet": 0, "emanet": 0}
    for entry in MMSEG_CHECKPOINTS.values():
        if entry.model in counts:
            counts[entry.model] += 1
            assert MMSEG_MODELS[entry.model].mmseg_model == entry.model
            assert entry.backbone in ("R-50-D8", "R-101-D8")
    assert counts == {"annnet": 16, "isanet": 16, "emanet": 4}
    assert (MMSEG_MODELS["annnet"], MMSEG_MODELS["isanet"], MMSEG_MODELS["emanet"]) == (
        ANNNet, ISANet, EMANet
    )  # fmt: skip

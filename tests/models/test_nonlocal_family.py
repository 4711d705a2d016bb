"""NLNet, GCNet, DNLNet and PSANet on a small backbone (logits, gradients, save/load, layout)
and the registry: attnblocks.models.from_mmseg picks each from a checkpoint's meta or keys.

That each computes mmseg's model is tests/models/test_<name>_mmseg.py (the fixtures).
"""

import json

import pytest
import torch

from attnblocks import ContextBlock, DisentangledNonLocal2d, NonLocal2d, PointwiseSpatialAttention
from attnblocks.models import (
    MMSEG_MODELS,
    DNLNet,
    FCNAttentionHead,
    GCNet,
    NLNet,
    PSANet,
    PSANetHead,
    mmseg_model_class,
)
from tests.compat.mmseg_reference import fixture_state_dict
from tests.layers.test_spatial_blocks import randomise
from tests.models.nonlocal_family_checks import DNLNET, GCNET, NLNET, PSANET, fixture_meta

MODELS = {
    "nlnet": (NLNet, NonLocal2d, {"attention_backend": "chunked", "chunk_size": 4}),
    "gcnet": (GCNet, ContextBlock, {"fusion": ("channel_add", "channel_mul")}),
    "dnlnet": (DNLNet, DisentangledNonLocal2d, {"temperature": 0.5}),
    "psanet": (PSANet, PointwiseSpatialAttention, {"mask_size": (5, 7)}),
}
FIXTURES = {"nlnet": NLNET, "gcnet": GCNET, "dnlnet": DNLNET, "psanet": PSANET}
# Biases with no gradient by design: a softmax ignores a shift of all its logits (key and mask
# biases), and DNL's whitening removes any constant from its queries and keys.
TRUE_ZERO = {
    "head.attention.phi.bias",
    "head.attention.theta.bias",
    "head.attention.conv_mask.bias",
}
HEAD_TYPES = {"nlnet": "NLHead", "gcnet": "GCHead", "dnlnet": "DNLHead", "psanet": "PSAHead"}


def small_model(name, **kwargs):
    model_class, _, options = MODELS[name]
    torch.manual_seed(0)
    # zero_init_last=False: timm zeroes each block's last norm, which stops gradients inside blocks.
    model = model_class("resnet18", 5, backbone_kwargs={"zero_init_last": False},
                        **{**options, **kwargs})  # fmt: skip
    randomise(model.head.attention, seed=1)  # the blocks start as the identity (or nearly)
    return model


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    return request.param, small_model(request.param)


@pytest.mark.parametrize("size", [(33, 47), (17, 9)])
def test_logits_are_one_tensor_at_the_input_size(model, size):
    _, model = model
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, *size)
    assert torch.isfinite(out).all()


def test_head_layout(model):
    name, model = model
    _, block_type, _ = MODELS[name]
    head = model.head
    assert isinstance(head.attention, block_type)
    if name == "psanet":
        assert isinstance(head, PSANetHead) and head.attention.inter_channels == 128
        assert head.bottleneck.conv.in_channels == 2 * 512
    else:
        assert isinstance(head, FCNAttentionHead) and head.inter_channels == 128
        assert head.attention.channels == 128 and head.fuse.conv.in_channels == 512 + 128


def test_every_parameter_gets_a_gradient(model):
    _, model = model
    model.train()
    model.zero_grad()
    model(torch.randn(2, 3, 48, 40)).square().mean().backward()
    for name, param in model.named_parameters():
        if name.startswith("backbone.fc") or name in TRUE_ZERO:
            continue
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_save_pretrained_and_from_pretrained(model, tmp_path):
    name, model = model
    pytest.importorskip("huggingface_hub", reason="save_pretrained needs the hub extra")
    model.eval().save_pretrained(tmp_path / name)
    config = json.loads((tmp_path / name / "config.json").read_text())
    assert config["backbone"] == "resnet18" and config["num_classes"] == 5
    restored = type(model).from_pretrained(tmp_path / name)
    if name == "psanet":
        assert config["mask_size"] == [5, 7] and restored.head.attention.mask_size == (5, 7)
    images = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(restored(images), model(images))


def test_registered_under_their_release_names():
    for name, (model_class, _, _) in MODELS.items():
        assert MMSEG_MODELS[name] is model_class and model_class.mmseg_model == name
        assert model_class.mmseg_head_types == (HEAD_TYPES[name],)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_from_mmseg_reads_the_class_from_the_meta_and_from_the_keys(name):
    model_class = MODELS[name][0]
    state = fixture_state_dict(FIXTURES[name])
    assert mmseg_model_class(state, {}) is model_class  # the head's keys alone
    # The config decides before the keys: every other head's type with these weights.
    for other, other_class in ((n, MODELS[n][0]) for n in MODELS if n != name):
        meta = fixture_meta(FIXTURES[name], type=HEAD_TYPES[other])
        assert mmseg_model_class(state, meta) is other_class
    assert mmseg_model_class(state, fixture_meta(FIXTURES[name])) is model_class


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown non-local mode 'softmax'"):
        NLNet("resnet18", mode="softmax")
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        DNLNet("resnet18", temperature=0)
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        GCNet("resnet18", pooling="max")
    with pytest.raises(ValueError, match="mask_size must be a positive int or a pair"):
        PSANet("resnet18", mask_size=(0, 3))
    with pytest.raises(ValueError, match=r"in_channels // 4 is 0 for in_channels=3"):
        FCNAttentionHead(3, 2, NonLocal2d)
    with pytest.raises(ValueError, match=r"PSANetHead was built for 64 channels, got .* 8 chan"):
        PSANetHead(64, 2, 3)(torch.randn(1, 8, 4, 4))

"""load_mmcv_state_dict: wrappers, strictness, configuration mismatches, NonLocal2d's norm.

That every mmcv fixture is reproduced through it, outputs and gradients, is
tests/layers/test_mm_fixtures.py.
"""

import pytest
import torch
from torch import nn

from attnblocks import PAM, ContextBlock, CrissCrossAttention, NonLocal2d
from attnblocks.compat import load_mmcv_state_dict
from tests.layers.mm_reference import mmcv_state_dict, reference_non_local
from tests.reference import relative_error

# Each kind of block, by a fixture with its configuration.
BLOCKS = {
    "criss_cross": lambda: CrissCrossAttention(64),
    "nonlocal_concatenation_subsample": lambda: NonLocal2d(
        64, mode="concatenation", sub_sample=True
    ),
    "context_att_add_mul": lambda: ContextBlock(64, fusion=("channel_add", "channel_mul")),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_wrapped_and_prefixed_weights_load_like_bare_ones(name):
    bare, wrapped = BLOCKS[name](), BLOCKS[name]()
    state = mmcv_state_dict(name)
    load_mmcv_state_dict(bare, state)
    prefixed = {f"module.{key}": value for key, value in state.items()}  # DataParallel's
    load_mmcv_state_dict(wrapped, {"meta": {}, "state_dict": prefixed})
    for key, value in bare.state_dict().items():
        assert torch.equal(value, wrapped.state_dict()[key]), key
    assert not any(torch.equal(value, BLOCKS[name]().state_dict()[key])
                   for key, value in bare.state_dict().items() if value.numel() > 1)  # fmt: skip


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("criss_cross", lambda s: s.pop("gamma.scale"), r"missing keys \(1\): \['gamma'\]"),
        ("criss_cross", lambda s: s.update({"gamma.weight": torch.zeros(())}),
         r"not part of mmcv's CrissCrossAttention: \['gamma.weight'\]"),
        ("criss_cross", lambda s: s.update({"key_conv.weight": torch.zeros(16, 64, 1, 1)}),
         r"CrissCrossAttention \(check channels and reduction\); shape mismatches: "
         r"\['key_conv.weight: checkpoint \(16, 64, 1, 1\), model \(8, 64, 1, 1\)'\]"),
        ("nonlocal_concatenation_subsample", lambda s: s.pop("phi.0.conv.bias"),
         r"missing keys \(1\): \['phi.bias'\]"),
        ("nonlocal_concatenation_subsample", lambda s: s.update({"g.0.conv.scale": torch.ones(1)}),
         r"unexpected keys \(1\): \['g.scale'\]"),
        ("nonlocal_concatenation_subsample",
         lambda s: s.update({"concat_project.conv.weight": torch.zeros(1, 32, 1, 1)}),
         r"shape mismatches: \['concat_project.weight: checkpoint \(1, 32, 1, 1\), "
         r"model \(1, 64, 1, 1\)'\]"),
        ("context_att_add_mul", lambda s: s.pop("channel_mul_conv.1.weight"),
         r"missing keys \(1\): \['channel_mul_conv.1.weight'\]"),
        ("context_att_add_mul", lambda s: s.update({"channel_add_conv.4.weight": torch.ones(1)}),
         r"unexpected keys \(1\): \['channel_add_conv.4.weight'\]"),
        ("context_att_add_mul", lambda s: s.update({"conv_mask.weight": torch.zeros(2, 64, 1, 1)}),
         r"shape mismatches: \['conv_mask.weight: checkpoint \(2, 64, 1, 1\)"),
    ],
    ids=["cc-missing", "cc-stray", "cc-shape", "nl-missing", "nl-stray", "nl-shape",
         "gc-missing", "gc-stray", "gc-shape"],
)  # fmt: skip
def test_a_key_that_does_not_fit_is_named(name, change, message):
    state = mmcv_state_dict(name)
    change(state)
    with pytest.raises(ValueError, match=message):
        load_mmcv_state_dict(BLOCKS[name](), state)


@pytest.mark.parametrize(
    "module, message",
    [
        (NonLocal2d(64, mode="concatenation"),  # the weights are sub-sampled ones
         r"not part of mmcv's NonLocal2d with sub_sample=False and no norm after conv_out: "
         r"\['g.0.conv.bias', 'g.0.conv.weight', 'phi.0.conv.bias', 'phi.0.conv.weight'\]"),
        (NonLocal2d(64, mode="gaussian", sub_sample=True),  # no theta, phi, concat_project
         r"mode, sub_sample and norm_layer\); unexpected keys \(5\): "
         r"\['concat_project.weight', 'phi.bias', 'phi.weight', 'theta.bias', 'theta.weight'\]"),
        (NonLocal2d(64, mode="concatenation", sub_sample=True, norm_layer=nn.BatchNorm2d),
         r"missing keys \(4\): \['conv_out.norm.bias'.*unexpected keys \(1\): "
         r"\['conv_out.conv.bias'\]"),  # mmcv's conv_out without a norm has a bias
    ],
    ids=["sub-sample", "mode", "norm"],
)  # fmt: skip
def test_weights_of_a_block_configured_otherwise_are_refused(module, message):
    with pytest.raises(ValueError, match=message):
        load_mmcv_state_dict(module, mmcv_state_dict("nonlocal_concatenation_subsample"))


def mmcv_non_local_with_norm() -> dict[str, torch.Tensor]:
    """mmcv's NonLocal2d(32, reduction=2, norm_cfg=dict(type="BN")) keys (mmseg's NLHead's
    block): conv_out is a bias-free ConvModule with its norm named ``bn``."""
    gen = torch.Generator().manual_seed(0)
    shapes = {"g.conv.weight": (16, 32, 1, 1), "g.conv.bias": (16,),
              "conv_out.conv.weight": (32, 16, 1, 1), "conv_out.bn.weight": (32,),
              "conv_out.bn.bias": (32,), "conv_out.bn.running_mean": (32,),
              "conv_out.bn.running_var": (32,), "theta.conv.weight": (16, 32, 1, 1),
              "theta.conv.bias": (16,), "phi.conv.weight": (16, 32, 1, 1),
              "phi.conv.bias": (16,)}  # fmt: skip
    state = {key: 0.3 * torch.randn(shape, generator=gen) for key, shape in shapes.items()}
    state["conv_out.bn.running_var"] = state["conv_out.bn.running_var"].abs() + 0.5
    return {**state, "conv_out.bn.num_batches_tracked": torch.tensor(7)}


def test_non_local_with_a_norm_after_conv_out():
    mmcv = mmcv_non_local_with_norm()
    block = NonLocal2d(32, norm_layer=nn.BatchNorm2d).eval()
    load_mmcv_state_dict(block, mmcv)
    assert block.conv_out.norm.num_batches_tracked == 7
    ours = {"g.weight": "g.conv.weight", "g.bias": "g.conv.bias",
            "theta.weight": "theta.conv.weight", "theta.bias": "theta.conv.bias",
            "phi.weight": "phi.conv.weight", "phi.bias": "phi.conv.bias",
            "conv_out.conv.weight": "conv_out.conv.weight",
            **{f"conv_out.norm.{leaf}": f"conv_out.bn.{leaf}"
               for leaf in ("weight", "bias", "running_mean", "running_var")}}  # fmt: skip
    x = torch.randn(2, 32, 5, 7, dtype=torch.float64)
    expected = reference_non_local(
        x, {key: mmcv[theirs] for key, theirs in ours.items()}, "embedded_gaussian", False
    )
    with torch.no_grad():
        assert relative_error(block.double()(x), expected) < 1e-10


def test_another_module_is_refused():
    with pytest.raises(ValueError, match=r"into CrissCrossAttention, NonLocal2d, ContextBlock; "
                                         r"got a PAM"):  # fmt: skip
        load_mmcv_state_dict(PAM(64), mmcv_state_dict("criss_cross"))

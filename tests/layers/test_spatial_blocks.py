"""What every spatial block promises: any map size, float64 gradients, mixed precision, errors.

Each block is compared with an independent float64 transcription of mmcv's forward
(tests/layers/mm_reference.py), of mmseg's (DNL and PSA blocks:
tests/layers/nonlocal_family_reference.py) or, for ContextBlock, with mmcv's
fixture-verified math written out in the test.
"""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from attnblocks import (
    ContextBlock,
    CrissCrossAttention,
    DisentangledNonLocal2d,
    NonLocal2d,
    PointwiseSpatialAttention,
)
from tests.layers.mm_reference import reference_criss_cross, reference_non_local
from tests.layers.nonlocal_family_reference import reference_dnl, reference_psa
from tests.reference import relative_error


def reference_criss_cross_block(x, state):
    state = {key: value.to(x.dtype) for key, value in state.items()}
    q, k, v = (
        F.conv2d(x, state[f"{name}.weight"], state[f"{name}.bias"])
        for name in ("query_conv", "key_conv", "value_conv")
    )
    return x + state["gamma"] * reference_criss_cross(q, k, v)


def reference_context(x, state, pooling, fusion):
    state = {key: value.to(x.dtype) for key, value in state.items()}
    if pooling == "att":
        logits = F.conv2d(x, state["conv_mask.weight"], state["conv_mask.bias"]).flatten(2)
        context = torch.einsum("bcn,bn->bc", x.flatten(2), logits.softmax(dim=-1)[:, 0])
    else:
        context = x.mean(dim=(2, 3))
    context = context[..., None, None]

    def transform(prefix):
        t = F.conv2d(context, state[f"{prefix}.0.weight"], state[f"{prefix}.0.bias"])
        t = F.layer_norm(t, t.shape[1:], state[f"{prefix}.1.weight"], state[f"{prefix}.1.bias"])
        return F.conv2d(t.relu(), state[f"{prefix}.3.weight"], state[f"{prefix}.3.bias"])

    out = x * torch.sigmoid(transform("channel_mul_conv")) if "channel_mul" in fusion else x
    return out + transform("channel_add_conv") if "channel_add" in fusion else out


def randomise(module, seed=0):
    """Weights that make every path count (the default init zeroes the last convs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return module


def psa_block(channels, psa_type, **factory):
    """A PSA block in eval mode (its BatchNorms use their running statistics, as the
    reference's); no shrinking, so that its grid is the map (shrinking: its own tests)."""
    block = PointwiseSpatialAttention(
        channels, (5, 4), psa_type=psa_type, shrink_factor=1, **factory
    )
    return block.eval()


# name -> (factory(channels, **dd), float64 reference(x, state) or None)
BLOCKS = {
    "criss_cross": (CrissCrossAttention, reference_criss_cross_block),
    **{
        f"non_local_{mode}{'_sub' if sub else ''}": (
            partial(NonLocal2d, mode=mode, sub_sample=sub, zero_init_last=False),
            partial(reference_non_local, mode=mode, sub_sample=sub),
        )
        for mode in ("embedded_gaussian", "gaussian", "dot_product", "concatenation")
        for sub in (False, True)
    },
    **{
        f"context_{pooling}_{'_'.join(f[8:] for f in fusion)}": (
            partial(ContextBlock, pooling=pooling, fusion=fusion, zero_init_last=False),
            partial(reference_context, pooling=pooling, fusion=fusion),
        )
        for pooling in ("att", "avg")
        for fusion in (("channel_add",), ("channel_mul",), ("channel_add", "channel_mul"))
    },
    **{
        f"dnl_{mode}": (
            partial(DisentangledNonLocal2d, mode=mode, zero_init_last=False),
            partial(reference_dnl, mode=mode),
        )
        for mode in ("embedded_gaussian", "dot_product")
    },
    **{
        f"psa_{psa_type}": (
            partial(psa_block, psa_type=psa_type),
            partial(reference_psa, mask_size=(5, 4), psa_type=psa_type, shrink_factor=1),
        )
        for psa_type in ("collect", "distribute", "bi-direction")
    },
}
NAMES = sorted(BLOCKS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 16, 1, 1), (3, 16, 7, 4), (2, 16, 9, 13)])
def test_any_map_size_matches_float64_reference(name, shape):
    factory, reference = BLOCKS[name]
    block = randomise(factory(16))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    if "_sub" in name and min(shape[2:]) < 2:
        with pytest.raises(ValueError, match="sub_sample=True needs maps of at least 2 x 2"):
            block(x)
        return
    out = block(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    state = {key: value.double() for key, value in block.state_dict().items()}
    assert relative_error(out, reference(x.double(), state)) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    block = randomise(BLOCKS[name][0](8, dtype=torch.float64))
    x = torch.randn(2, 8, 5, 3, dtype=torch.float64, requires_grad=True)
    names, params = zip(*block.named_parameters())

    def run(x, *values):
        return torch.func.functional_call(block, dict(zip(names, values)), (x,))

    # Non-differentiable points (ReLU kinks, max-pool ties) are avoided by random inputs.
    assert torch.autograd.gradcheck(run, (x, *(p.detach().requires_grad_() for p in params)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_autocast_with_large_activations_is_finite_and_accurate(name, dtype):
    factory, reference = BLOCKS[name]
    block = randomise(factory(16), seed=2)
    x = 60 * torch.randn(1, 16, 6, 7, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=dtype):
        out = block(x)
    assert torch.isfinite(out).all()
    state = {key: value.double() for key, value in block.state_dict().items()}
    assert relative_error(out, reference(x.double(), state)) < 2e-2


@pytest.mark.parametrize("name", NAMES)
def test_half_parameters_and_inputs_are_finite(name):
    block = randomise(BLOCKS[name][0](16), seed=4).to(torch.bfloat16)
    x = 60 * torch.randn(1, 16, 6, 7, generator=torch.Generator().manual_seed(4))
    out = block(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_factory_kwargs_and_bad_inputs(name):
    factory = BLOCKS[name][0]
    block = factory(16, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in block.parameters())
    block = factory(16)
    label = type(block).__name__
    with pytest.raises(ValueError, match=rf"{label} input must be a 4D tensor \(B, C, H, W\)"):
        block(torch.randn(16, 4, 4))
    with pytest.raises(ValueError, match=f"{label} was built for 16 channels, got an input with 8"):
        block(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="non-empty spatial map, got H x W = 0 x 4"):
        block(torch.randn(1, 16, 0, 4))
    with pytest.raises(ValueError, match=rf"{label} input must be floating-point"):
        block(torch.ones(1, 16, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="channels must be a positive int, got 0"):
        factory(0)


@pytest.mark.parametrize("name", [n for n in NAMES if not n.startswith("context_avg")])
def test_attention_map_shape_and_point_checks(name):
    block = randomise(BLOCKS[name][0](16))
    x = torch.randn(2, 16, 6, 9)
    maps = block.attention_map(x, [(0, 0), (5, 8)])
    key_size = (3, 4) if "_sub" in name else (6, 9)
    assert maps.shape == (2, 2, *key_size) and torch.isfinite(maps).all()
    if not name.startswith(("non_local_dot", "non_local_concat", "dnl_dot")):
        torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"points \[\[6, 0\]\] lie outside the 6 x 9"):
        block.attention_map(x, [(6, 0)])
    with pytest.raises(ValueError, match=r"points must be \(row, col\) integer pairs"):
        block.attention_map(x, [(0.5, 1.0)])

"""channel_attention and channel_attention_weights against float64 math written out here."""

import pytest
import torch

from attnblocks.functional import (
    CHANNEL_BACKENDS,
    CHANNEL_MODES,
    channel_attention,
    channel_attention_weights,
)
from tests.reference import relative_error


def float64_channel_attention(x, sign):
    """softmax(sign * X X^T) X in float64, with an explicit max-shifted exp/sum softmax."""
    x = x.double()
    energy = sign * torch.einsum("bcn,bdn->bcd", x, x)
    energy = energy - energy.amax(dim=-1, keepdim=True)
    weights = energy.exp() / energy.exp().sum(dim=-1, keepdim=True)
    return weights @ x


MODE_SIGN = {"original": -1.0, "paper": 1.0}  # original = softmax(rowmax(E) - E) = softmax(-E)


def random_maps(batch=2, channels=12, positions=23, dtype=torch.float32, scale=1.0):
    gen = torch.Generator().manual_seed(0)
    return (scale * torch.randn(batch, channels, positions, generator=gen)).to(dtype)


@pytest.mark.parametrize("mode", CHANNEL_MODES)
def test_weights_rows_sum_to_one(mode):
    weights = channel_attention_weights(random_maps(), mode)
    assert weights.shape == (2, 12, 12)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 12))


@pytest.mark.parametrize("backend", CHANNEL_BACKENDS)
@pytest.mark.parametrize("mode", CHANNEL_MODES)
def test_matches_float64(mode, backend):
    x = random_maps(scale=0.3)
    out = channel_attention(x, mode=mode, backend=backend)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert relative_error(out, float64_channel_attention(x, MODE_SIGN[mode])) < 1e-5


def test_original_mode_favours_least_similar_channels():
    # Channel 0 equals channel 1 and opposes channel 2: the original mode weighs channel 2 most.
    x = torch.tensor([[[1.0, 2.0], [1.0, 2.0], [-1.0, -2.0]]])
    assert channel_attention_weights(x, "original")[0, 0].argmax() == 2
    assert channel_attention_weights(x, "paper")[0, 0].argmax() in (0, 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_energies_beyond_float16_range(dtype):
    x = random_maps(positions=300, dtype=dtype, scale=20.0)  # E diagonal ~ 300 * 400 > 65504
    out = channel_attention(x)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert relative_error(out, float64_channel_attention(x, -1.0)) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_autocast_runs_in_float32(dtype):
    x = random_maps(positions=300, scale=20.0)
    with torch.autocast("cpu", dtype=dtype):
        out = channel_attention(x)
    assert torch.isfinite(out).all()
    assert relative_error(out, float64_channel_attention(x, -1.0)) < 1e-5


@pytest.mark.parametrize("mode", CHANNEL_MODES)
def test_gradcheck(mode):
    x = random_maps(batch=2, channels=4, positions=5, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: channel_attention(t, mode=mode), [x])


def test_bad_arguments():
    x = random_maps()
    with pytest.raises(ValueError, match="unknown channel attention mode 'reverse'"):
        channel_attention(x, mode="reverse")
    with pytest.raises(ValueError, match=r"unknown attention backend 'chunky'.*'auto', 'bmm'"):
        channel_attention(x, backend="chunky")
    with pytest.raises(
        ValueError, match=r"x must be a 3D tensor \(batch, channels, positions\), got a 4D"
    ):
        channel_attention(x[..., None])
    with pytest.raises(ValueError, match="floating-point"):
        channel_attention(x.int())

"""criss_cross_attention against mmcv's einsum formulation in float64, memory and precision."""

import pytest
import torch

import attnblocks.functional.criss_cross as criss_cross_module
from attnblocks.functional import criss_cross_attention, criss_cross_attention_weights
from tests.layers.mm_reference import reference_criss_cross
from tests.reference import LargestTensor, relative_error


def maps(shape, channels, dtype=torch.float64, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    batch, depth, height, width = shape
    q, k = (torch.randn(batch, depth, height, width, generator=gen, dtype=dtype) for _ in "qk")
    v = torch.randn(batch, channels, height, width, generator=gen, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 3, 1, 1), (3, 4, 1, 6), (2, 4, 5, 1)])
def test_matches_mmcv_formulation(shape):
    query, key, value = maps(shape, channels=6)
    expected = reference_criss_cross(query, key, value)
    assert relative_error(criss_cross_attention(query, key, value), expected) < 1e-12


@pytest.mark.parametrize("fused", [False, True])
def test_gradcheck_float64(fused):
    query, key, value = maps((2, 3, 4, 5), channels=4, requires_grad=True)
    if not fused:
        assert torch.autograd.gradcheck(criss_cross_attention, (query, key, value))
        return
    gamma = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    residual = torch.randn_like(value, requires_grad=True)

    def block(q, k, v, g, r):
        return criss_cross_attention(q, k, v, gamma=g, residual=r)

    assert torch.autograd.gradcheck(block, (query, key, value, gamma, residual))


def test_blocked_loops_give_the_same_result(monkeypatch):
    """Tiny block budget: rows and columns go through many blocks, forward and backward."""
    query, key, value = maps((2, 4, 6, 7), channels=5, requires_grad=True)
    grads = {}
    for budget in (16 * 2**20, 64):
        monkeypatch.setattr(criss_cross_module, "_BLOCK_BYTES", budget)
        out = criss_cross_attention(query, key, value, residual=value, gamma=torch.tensor([0.3]))
        grads[budget] = torch.autograd.grad(out.square().sum(), (query, key, value))
        grads[budget] = (out, *grads[budget])
    for big, small in zip(grads[16 * 2**20], grads[64]):
        assert relative_error(small, big) < 1e-12


def test_weights_rows_sum_to_one_and_skip_the_pixel_in_its_column():
    query, key, _ = maps((2, 3, 5, 6), channels=1)
    weights = criss_cross_attention_weights(query, key)
    assert weights.shape == (2, 5, 6, 5 + 6)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 5, 6, dtype=torch.float64))
    rows = torch.arange(5)
    assert (weights[:, rows, :, rows] == 0).all()  # column entry i == h of pixel (h, w)
    # The weights reproduce the attention: sum over the cross of weights * values.
    value = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    by_weights = torch.einsum("bhwi,bciw->bchw", weights[..., :5], value) + torch.einsum(
        "bhwj,bchj->bchw", weights[..., 5:], value
    )
    torch.testing.assert_close(by_weights, criss_cross_attention(query, key, value))


def test_memory_grows_with_n_times_h_plus_w_not_n_squared():
    query, key, value = maps((1, 4, 32, 32), channels=8, dtype=torch.float32, requires_grad=True)
    with LargestTensor() as probe:
        criss_cross_attention(query, key, value).sum().backward()
    n = 32 * 32
    assert probe.largest <= n * (32 + 32)  # the row / column probabilities, never N x N
    assert probe.largest < n * n // 8


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_autocast_and_half_inputs_are_finite(dtype):
    query, key, value = maps((1, 8, 6, 7), channels=4, dtype=torch.float32, seed=3)
    query, key = 60 * query, 60 * key  # energies ~ 3600 * 8: beyond float16's 65504
    expected = reference_criss_cross(query.double(), key.double(), value.double())
    with torch.autocast("cpu", dtype=dtype):
        out = criss_cross_attention(query, key, value.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert relative_error(out, expected) < 1e-2
    out = criss_cross_attention(query.to(dtype), key.to(dtype), value.to(dtype))
    assert torch.isfinite(out).all()
    half = [t.to(dtype).double() for t in (query, key, value)]
    assert relative_error(out, reference_criss_cross(*half)) < 1e-2


def test_bad_inputs_raise_value_errors():
    query, key, value = maps((1, 4, 5, 6), channels=3, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"query must be a 4D tensor \(B, C, H, W\)"):
        criss_cross_attention(query[0], key, value)
    with pytest.raises(ValueError, match="query and key must have the same shape"):
        criss_cross_attention(query, key[:, :2], value)
    with pytest.raises(ValueError, match="value must have the batch size and map size of query"):
        criss_cross_attention(query, key, value[..., :4])
    with pytest.raises(ValueError, match="residual must have the shape of value"):
        criss_cross_attention(query, key, value, residual=query)
    with pytest.raises(ValueError, match="gamma must be a one-element tensor"):
        criss_cross_attention(query, key, value, gamma=torch.ones(2))
    with pytest.raises(ValueError, match="non-empty map"):
        criss_cross_attention(query[:, :, :0], key[:, :, :0], value[:, :, :0])

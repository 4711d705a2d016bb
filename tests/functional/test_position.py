"""position_attention and position_attention_weights against float64 math written out here."""

import pytest
import torch

from attnblocks.functional import (
    POSITION_BACKENDS,
    position_attention,
    position_attention_weights,
)
from tests.reference import relative_error

CONCRETE_BACKENDS = [name for name in POSITION_BACKENDS if name != "auto"]


def float64_attention(query, key, value, scale=1.0):
    """softmax(scale q k^T) v in float64 with an explicit, max-shifted exp/sum softmax."""
    energy = scale * torch.einsum("bid,bjd->bij", query.double(), key.double())
    energy = energy - energy.amax(dim=-1, keepdim=True)
    weights = energy.exp() / energy.exp().sum(dim=-1, keepdim=True)
    return weights @ value.double()


def random_qkv(batch=2, positions=37, key_dim=8, value_dim=16, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, positions)
    query = torch.randn(*shape, key_dim, generator=gen, dtype=dtype)
    key = torch.randn(*shape, key_dim, generator=gen, dtype=dtype)
    value = torch.randn(*shape, value_dim, generator=gen, dtype=dtype)
    return query, key, value


def test_weights_rows_sum_to_one_over_key_positions():
    query, key, _ = random_qkv(positions=29)
    weights = position_attention_weights(query, key)
    assert weights.shape == (2, 29, 29)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 29))
    assert (weights >= 0).all()


@pytest.mark.parametrize("backend", POSITION_BACKENDS)
@pytest.mark.parametrize("positions", [1, 2, 37, 130])
def test_matches_float64(backend, positions):
    query, key, value = random_qkv(positions=positions)
    out = position_attention(query, key, value, backend=backend)
    assert out.shape == value.shape and out.dtype == torch.float32
    assert relative_error(out, float64_attention(query, key, value)) < 1e-5


def test_no_scaling_of_energies():
    # A 1/sqrt(d) scaling would flatten these sharp weights; unscaled, row 0 picks key 0.
    query = torch.tensor([[[4.0, 0.0], [0.0, 0.0]]])
    key = torch.tensor([[[4.0, 0.0], [0.0, 4.0]]])
    weights = position_attention_weights(query, key)
    expected = torch.softmax(torch.tensor([16.0, 0.0]), dim=0)
    torch.testing.assert_close(weights[0, 0], expected)


@pytest.mark.parametrize("backend", POSITION_BACKENDS)
def test_scale_multiplies_the_energies(backend):
    query, key, value = random_qkv(positions=45, key_dim=8)
    scale = 8**-0.5
    out = position_attention(query, key, value, backend=backend, scale=scale, chunk_size=16)
    expected = float64_attention(query, key, value, scale=scale)
    assert relative_error(out, expected) < 1e-5
    assert relative_error(out, float64_attention(query, key, value)) > 1e-2  # scale did act
    weights = position_attention_weights(query, key, scale=scale)
    assert relative_error(weights @ value, expected) < 1e-5


@pytest.mark.parametrize("backend", CONCRETE_BACKENDS)
def test_scale_gradients_match_bmm(backend):
    inputs = [t.requires_grad_() for t in random_qkv(positions=23)]
    grads = {}
    for name in ("bmm", backend):
        out = position_attention(*inputs, backend=name, scale=0.3, chunk_size=8)
        grads[name] = torch.autograd.grad(out.square().sum(), inputs)
    for ours, reference in zip(grads[backend], grads["bmm"]):
        assert relative_error(ours, reference) < 1e-5


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), True, "0.5"])
def test_bad_scale(scale):
    query, key, value = random_qkv()
    with pytest.raises(ValueError, match="scale must be a positive number or None"):
        position_attention(query, key, value, scale=scale)


def test_queries_and_keys_may_differ_in_count():
    query, _, _ = random_qkv(positions=5)
    _, key, value = random_qkv(positions=11, seed=1)
    out = position_attention(query, key, value)
    assert out.shape == (2, 5, 16)
    assert relative_error(out, float64_attention(query, key, value)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_with_energies_beyond_float16_range(dtype):
    query, key, value = random_qkv(key_dim=64, dtype=dtype)
    query, key = query * 60, key * 60  # |q.k| reaches ~1e5 > 65504
    out = position_attention(query, key, value)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert relative_error(out, float64_attention(query, key, value)) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_autocast_keeps_energies_finite(dtype):
    query, key, value = random_qkv(key_dim=64)
    query, key = query * 60, key * 60
    with torch.autocast("cpu", dtype=dtype):
        out = position_attention(query, key, value)
    assert torch.isfinite(out).all()
    assert relative_error(out, float64_attention(query, key, value)) < 1e-2


@pytest.mark.parametrize("backend", CONCRETE_BACKENDS)
def test_gradcheck(backend):
    query, key, value = random_qkv(
        batch=2, positions=6, key_dim=3, value_dim=4, dtype=torch.float64
    )
    inputs = [t.requires_grad_() for t in (query, key, value)]
    assert torch.autograd.gradcheck(
        lambda q, k, v: position_attention(q, k, v, backend=backend), inputs
    )


def test_unknown_backend_lists_valid_names():
    query, key, value = random_qkv()
    with pytest.raises(ValueError, match=r"unknown attention backend 'flash'.*'auto', 'bmm'"):
        position_attention(query, key, value, backend="flash")


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True])
def test_bad_chunk_size(chunk_size):
    query, key, value = random_qkv()
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        position_attention(query, key, value, chunk_size=chunk_size)


def test_bad_shapes_raise_value_errors():
    query, key, value = random_qkv()
    with pytest.raises(
        ValueError, match=r"query must be a 3D tensor \(batch, positions, features\), got a 2D"
    ):
        position_attention(query[0], key, value)
    with pytest.raises(ValueError, match="query and key must share"):
        position_attention(query[..., :4], key, value)
    with pytest.raises(ValueError, match="value must have the batch size and number of positions"):
        position_attention(query, key, value[:, :5])
    with pytest.raises(ValueError, match="floating-point"):
        position_attention(query.long(), key, value)


@pytest.mark.parametrize("backend", POSITION_BACKENDS)
def test_no_key_positions_is_a_value_error_for_every_backend(backend):
    # bmm would return zeros and chunked fail inside amax: a softmax over no keys is undefined.
    query, key, value = random_qkv()
    with pytest.raises(ValueError, match="key must have at least one position"):
        position_attention(query, key[:, :0], value[:, :0], backend=backend)

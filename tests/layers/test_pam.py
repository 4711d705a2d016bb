"""PAM against the authors' fixture and a float64 transcription of their PAM_Module."""

import pytest
import torch

from attnblocks import PAM
from attnblocks.functional import POSITION_BACKENDS
from tests.reference import (
    LargestTensor,
    fill_rule_state_dict,
    load_arrays,
    manifest,
    reference_pam,
    relative_error,
)


def pam_with_weights(state, **kwargs):
    pam = PAM(state["value_conv.weight"].shape[0], **kwargs)
    pam.load_state_dict(state)  # strict: the authors' keys load as they are
    return pam


def test_state_dict_layout_is_the_authors():
    expected = {key: tuple(shape) for key, shape in manifest()["pam"]["keys"]}
    ours = {key: tuple(value.shape) for key, value in PAM(64).state_dict().items()}
    assert ours == expected


@pytest.mark.parametrize("backend", POSITION_BACKENDS)
def test_matches_authors_fixture(backend):
    arrays = load_arrays("pam")
    pam = pam_with_weights(fill_rule_state_dict("pam"), backend=backend)
    x = arrays["input"].clone().requires_grad_()
    out = pam(x)
    (out * arrays["weight_for_loss"]).sum().backward()

    assert relative_error(out, arrays["output"]) < 1e-4
    assert relative_error(x.grad, arrays["grad_input"]) < 1e-4
    for name, param in pam.named_parameters():
        if name == "key_conv.bias":
            continue  # exactly zero in exact arithmetic: checked below
        assert relative_error(param.grad, arrays[f"grad.{name}"]) < 1e-4, name
    # A key bias adds q_i . b to every energy of row i; softmax ignores a per-row shift, so its
    # true gradient is 0 and both codes return rounding noise (~5e-5 against ~1e3 for the weight).
    key_scale = arrays["grad.key_conv.weight"].norm()
    assert pam.key_conv.bias.grad.norm() < 1e-6 * key_scale
    assert arrays["grad.key_conv.bias"].norm() < 1e-6 * key_scale


@pytest.mark.parametrize("shape", [(1, 16, 1, 1), (1, 16, 5, 9), (3, 16, 7, 4), (2, 16, 11, 13)])
def test_any_map_size_matches_float64(shape):
    state = fill_rule_state_dict("pam")
    x = torch.randn(shape[0], 64, *shape[2:], generator=torch.Generator().manual_seed(1))
    out = pam_with_weights(state)(x)
    assert out.shape == x.shape
    expected = reference_pam(x.double(), {k: v.double() for k, v in state.items()})
    assert relative_error(out, expected) < 1e-5


def test_starts_as_identity():
    pam = PAM(32)
    x = torch.randn(2, 32, 6, 5)
    assert pam.gamma.shape == (1,) and pam.gamma.item() == 0.0
    torch.testing.assert_close(pam(x), x, rtol=0, atol=0)


def test_gamma_init_and_factory_kwargs():
    pam = PAM(32, reduction=4, gamma_init=0.25, dtype=torch.float64, device="cpu")
    assert pam.gamma.item() == 0.25 and pam.key_channels == 8
    assert all(p.dtype == torch.float64 for p in pam.parameters())


def test_gradcheck_float64():
    pam = PAM(8, reduction=4, gamma_init=0.7, dtype=torch.float64)
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pam, [x])


def test_attention_weights_rows_sum_to_one():
    pam = pam_with_weights(fill_rule_state_dict("pam"))
    weights = pam.attention_weights(torch.randn(2, 64, 5, 6))
    assert weights.shape == (2, 30, 30)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 30))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_is_finite_and_accurate(dtype):
    state = fill_rule_state_dict("pam")
    x = 60 * torch.randn(1, 64, 6, 7, generator=torch.Generator().manual_seed(2))
    pam = pam_with_weights(state).to(dtype)
    out = pam(x.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    expected = reference_pam(
        x.to(dtype).double(), {k: v.to(dtype).double() for k, v in state.items()}
    )
    assert relative_error(out, expected) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_autocast_is_finite_and_accurate(dtype):
    state = fill_rule_state_dict("pam")
    x = 60 * torch.randn(1, 64, 6, 7, generator=torch.Generator().manual_seed(2))
    pam = pam_with_weights(state)
    with torch.autocast("cpu", dtype=dtype):
        out = pam(x)
    assert torch.isfinite(out).all()
    expected = reference_pam(x.double(), {k: v.double() for k, v in state.items()})
    assert relative_error(out, expected) < 1e-2


def test_bad_inputs_raise_value_errors():
    pam = PAM(16)
    with pytest.raises(ValueError, match=r"PAM input must be a 4D tensor \(B, C, H, W\), got a 3D"):
        pam(torch.randn(16, 4, 4))
    with pytest.raises(ValueError, match="PAM was built for 16 channels, got an input with 8"):
        pam(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="non-empty spatial map, got H x W = 0 x 4"):
        pam(torch.randn(1, 16, 0, 4))
    with pytest.raises(
        ValueError, match=r"PAM input must be floating-point, got dtype torch\.int64"
    ):
        pam(torch.ones(1, 16, 4, 4, dtype=torch.long))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="unknown attention backend 'naive'"):
        PAM(16, backend="naive")
    with pytest.raises(ValueError, match=r"channels // reduction must be at least 1, got 4 // 8"):
        PAM(4)
    with pytest.raises(ValueError, match="channels must be a positive int, got 0"):
        PAM(0)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        PAM(16, chunk_size=0)


def test_attention_map_is_the_rows_of_the_full_matrix():
    pam = pam_with_weights(fill_rule_state_dict("pam"))
    x = torch.randn(2, 64, 9, 11, generator=torch.Generator().manual_seed(6))
    points = [(0, 0), (4, 7), (8, 10)]
    maps = pam.attention_map(x, points)
    assert maps.shape == (2, 3, 9, 11)
    full = pam.attention_weights(x)  # (B, N, N), rows = queries
    for index, (row, col) in enumerate(points):
        torch.testing.assert_close(maps[:, index].flatten(1), full[:, row * 11 + col])
    torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(2, 3))
    torch.testing.assert_close(pam.attention_map(x, torch.tensor(points)), maps)


def test_attention_map_never_builds_the_full_matrix():
    pam = PAM(16, reduction=2)
    x = torch.randn(1, 16, 32, 32)  # N = 1024
    with LargestTensor() as probe:
        pam.attention_map(x, [(3, 4), (30, 1)])
    assert probe.largest < 1024 * 1024 // 8


def test_attention_map_rejects_bad_points():
    pam = PAM(16)
    x = torch.randn(1, 16, 5, 6)
    with pytest.raises(ValueError, match=r"points \[\[5, 0\], \[0, -1\]\] lie outside the 5 x 6"):
        pam.attention_map(x, [(1, 1), (5, 0), (0, -1)])
    with pytest.raises(ValueError, match=r"points must be \(row, col\) integer pairs"):
        pam.attention_map(x, [1, 2, 3])
    with pytest.raises(ValueError, match=r"points must be \(row, col\) integer pairs"):
        pam.attention_map(x, [(0.5, 1.0)])

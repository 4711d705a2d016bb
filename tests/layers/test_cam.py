"""CAM against the authors' fixture and a float64 transcription of their CAM_Module."""

import pytest
import torch

from attnblocks import CAM
from attnblocks.functional import CHANNEL_BACKENDS, CHANNEL_MODES
from tests.reference import (
    fill_rule_state_dict,
    load_arrays,
    manifest,
    reference_cam,
    relative_error,
)


def test_state_dict_layout_is_the_authors():
    expected = {key: tuple(shape) for key, shape in manifest()["cam"]["keys"]}
    assert {key: tuple(value.shape) for key, value in CAM(64).state_dict().items()} == expected


@pytest.mark.parametrize("backend", CHANNEL_BACKENDS)
def test_matches_authors_fixture(backend):
    arrays = load_arrays("cam")
    cam = CAM(64, backend=backend)
    cam.load_state_dict(fill_rule_state_dict("cam"))
    x = arrays["input"].clone().requires_grad_()
    out = cam(x)
    (out * arrays["weight_for_loss"]).sum().backward()

    assert relative_error(out, arrays["output"]) < 1e-4
    assert relative_error(x.grad, arrays["grad_input"]) < 1e-4
    assert relative_error(cam.gamma.grad, arrays["grad.gamma"]) < 1e-4


@pytest.mark.parametrize("mode", CHANNEL_MODES)
@pytest.mark.parametrize("shape", [(1, 6, 1, 1), (2, 6, 5, 9), (3, 6, 8, 3)])
def test_modes_and_map_sizes_match_float64(mode, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    out = CAM(shape[1], gamma_init=0.5, mode=mode)(x)
    assert out.shape == x.shape
    assert relative_error(out, reference_cam(x.double(), 0.5, mode)) < 1e-5


def test_starts_as_identity_with_gamma_its_only_parameter():
    cam = CAM(8)
    assert [name for name, _ in cam.named_parameters()] == ["gamma"]
    assert cam.gamma.shape == (1,) and cam.gamma.item() == 0.0
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(cam(x), x, rtol=0, atol=0)


@pytest.mark.parametrize("mode", CHANNEL_MODES)
def test_gradcheck_float64(mode):
    cam = CAM(5, gamma_init=0.6, mode=mode, dtype=torch.float64)
    x = torch.randn(2, 5, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cam, [x])


@pytest.mark.parametrize("mode", CHANNEL_MODES)
def test_attention_weights_rows_sum_to_one(mode):
    weights = CAM(6, mode=mode).attention_weights(torch.randn(2, 6, 4, 5))
    assert weights.shape == (2, 6, 6)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 6))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_energies_stay_finite(dtype):
    x = 20 * torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(4))
    x = x.to(dtype)  # channel energies ~ 256 * 400 = 1e5 > 65504
    out = CAM(8, gamma_init=0.5).to(dtype)(x)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert relative_error(out, reference_cam(x.double(), 0.5)) < 1e-2


def test_bad_inputs_and_arguments():
    cam = CAM(16)
    with pytest.raises(ValueError, match=r"CAM input must be a 4D tensor \(B, C, H, W\), got a 2D"):
        cam(torch.randn(16, 4))
    with pytest.raises(ValueError, match="CAM was built for 16 channels, got an input with 3"):
        cam(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="non-empty spatial map, got H x W = 4 x 0"):
        cam(torch.randn(1, 16, 4, 0))
    with pytest.raises(
        ValueError, match=r"CAM input must be floating-point, got dtype torch\.bool"
    ):
        cam(torch.ones(1, 16, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown channel attention mode 'softmax'"):
        CAM(16, mode="softmax")
    with pytest.raises(ValueError, match="unknown attention backend 'sdpa'"):
        CAM(16, backend="sdpa")

"""DualAttention: wiring, injectable layers, gradients and input checks."""

import pytest
import torch
from torch import nn

from attnblocks import CAM, PAM, DualAttention
from tests.reference import reference_cam, reference_pam, relative_error


def test_outputs_are_the_two_branches_and_their_sum():
    block = DualAttention(32, gamma_init=0.5).eval()
    x = torch.randn(2, 32, 7, 5)
    out = block(x)
    assert block.inter_channels == 8
    assert [t.shape for t in out] == [torch.Size([2, 8, 7, 5])] * 3
    torch.testing.assert_close(out.fused, out.pam + out.cam)

    # Each branch: conv-norm-act -> attention -> conv-norm-act, against float64 references.
    with torch.no_grad():
        x64 = x.double()
        block64 = block.double()
        pam = block64.pam_out(reference_pam(block64.pam_in(x64), block64.pam.state_dict()))
        cam = block64.cam_out(reference_cam(block64.cam_in(x64), 0.5))
    assert relative_error(out.pam, pam) < 1e-5
    assert relative_error(out.cam, cam) < 1e-5


def test_configuration_reaches_the_blocks():
    block = DualAttention(64, inter_channels=24, reduction=4, cam_mode="paper", gamma_init=0.1)
    assert isinstance(block.pam, PAM) and isinstance(block.cam, CAM)
    assert block.pam.channels == 24 and block.pam.key_channels == 6
    assert block.cam.mode == "paper"
    assert block.pam.gamma.item() == pytest.approx(0.1)
    assert block.cam.gamma.item() == pytest.approx(0.1)


def test_norm_and_act_layers_are_injectable():
    def group_norm(channels, **factory):
        return nn.GroupNorm(4, channels, **factory)

    block = DualAttention(32, norm_layer=group_norm, act_layer=nn.GELU)
    for branch in (block.pam_in, block.cam_in, block.pam_out, block.cam_out):
        assert isinstance(branch.norm, nn.GroupNorm) and isinstance(branch.act, nn.GELU)
    assert block(torch.randn(1, 32, 4, 4)).fused.shape == (1, 8, 4, 4)


def test_every_parameter_receives_a_gradient():
    block = DualAttention(32, gamma_init=0.5)
    block(torch.randn(2, 32, 5, 6)).fused.square().mean().backward()
    for name, param in block.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("shape", [(1, 64, 1, 1), (1, 64, 3, 8), (2, 64, 9, 9)])
def test_small_and_odd_maps(shape):
    out = DualAttention(64).eval()(torch.randn(shape))
    assert out.fused.shape == (shape[0], 16, *shape[2:])
    assert torch.isfinite(out.fused).all()


def test_bad_input_and_arguments():
    block = DualAttention(64)
    with pytest.raises(
        ValueError, match="DualAttention was built for 64 channels, got an input with 8"
    ):
        block(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="in_channels // 4 is 0 for in_channels=3"):
        DualAttention(3)
    with pytest.raises(ValueError, match="inter_channels must be a positive int"):
        DualAttention(16, inter_channels=0)
    with pytest.raises(ValueError, match="channels // reduction must be at least 1, got 4 // 8"):
        DualAttention(16)

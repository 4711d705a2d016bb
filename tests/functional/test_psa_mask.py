"""psa_mask against mmcv's PSAMask definition: its CPU loops, forward and backward.

The reference (tests/layers/nonlocal_family_reference.py) transcribes
``psamask_{collect,distribute}_{forward,backward}`` of mmcv 2.1.0's
``mmcv/ops/csrc/pytorch/cpu/psamask.cpp`` loop by loop, on flat buffers with the same
index arithmetic.
"""

import pytest
import torch

from attnblocks.functional import psa_mask
from tests.layers.nonlocal_family_reference import mmcv_psamask, mmcv_psamask_backward

# (mask_h, mask_w) odd and even, smaller than, equal to and larger than the map; 1 x 1
MASKS = [(3, 3), (4, 6), (5, 2), (1, 1), (9, 13), (16, 16)]
MAPS = [(5, 7), (4, 6), (1, 9), (7, 1), (6, 5)]


@pytest.mark.parametrize("psa_type", ["collect", "distribute"])
@pytest.mark.parametrize("mask_size", MASKS, ids=lambda m: f"mask{m[0]}x{m[1]}")
@pytest.mark.parametrize("size", MAPS, ids=lambda s: f"map{s[0]}x{s[1]}")
def test_forward_and_backward_equal_mmcvs_loops(psa_type, mask_size, size):
    gen = torch.Generator().manual_seed(sum(mask_size) + 7 * sum(size))
    x = torch.randn(2, mask_size[0] * mask_size[1], *size, generator=gen, requires_grad=True)
    out = psa_mask(x, psa_type, mask_size)
    assert out.shape == (2, size[0] * size[1], *size)
    assert torch.equal(out, mmcv_psamask(x.detach(), psa_type, mask_size))
    grad_out = torch.randn(out.shape, generator=gen)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    assert torch.equal(grad, mmcv_psamask_backward(grad_out, psa_type, mask_size))


def test_distribute_is_collect_with_the_position_axes_swapped():
    x = torch.randn(1, 25, 4, 6)
    collect = psa_mask(x, "collect", 5).reshape(1, 24, 24)
    torch.testing.assert_close(psa_mask(x, "distribute", (5, 5)).reshape(1, 24, 24),
                               collect.transpose(1, 2), rtol=0, atol=0)  # fmt: skip


def test_a_mask_covering_the_map_leaves_no_zeros():
    # 2H - 1 rows and 2W - 1 columns: every pixel's mask reaches every position.
    x = torch.rand(1, 7 * 9, 4, 5) + 1
    assert (psa_mask(x, "collect", (7, 9)) > 0).all()


@pytest.mark.parametrize("psa_type", ["collect", "distribute"])
def test_gradcheck_float64(psa_type):
    x = torch.randn(2, 3 * 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: psa_mask(t, psa_type, (3, 2)), (x,), fast_mode=True)


def test_half_precision_keeps_the_dtype():
    x = torch.randn(1, 9, 4, 4).to(torch.bfloat16)
    out = psa_mask(x, "collect", 3)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out.float(), psa_mask(x.float(), "collect", 3))


def test_bad_arguments_are_named():
    x = torch.randn(1, 9, 4, 4)
    with pytest.raises(ValueError, match="unknown psa_type 'both'; expected one of 'collect'"):
        psa_mask(x, "both", 3)
    with pytest.raises(ValueError, match=r"expects 4 \* 4 = 16 channels, got 9"):
        psa_mask(x, "collect", (4, 4))
    with pytest.raises(ValueError, match="mask_size must be a positive int or a pair"):
        psa_mask(x, "collect", (3, 0))
    with pytest.raises(ValueError, match="mask_size must be a positive int or a pair"):
        psa_mask(x, "collect", (3, 3, 1))
    with pytest.raises(ValueError, match=r"psa_mask input must be a 4D tensor"):
        psa_mask(x[0], "collect", 3)
    with pytest.raises(ValueError, match="psa_mask input must be floating-point"):
        psa_mask(x.long(), "collect", 3)

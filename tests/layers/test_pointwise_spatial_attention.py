"""PointwiseSpatialAttention: mmseg's PSAHead attention (shrinking, compact, options), maps, checks.

The shared block checks (any size, float64 gradcheck, autocast, bad inputs) are in
test_spatial_blocks.py; the fixture of mmseg's PSANet in tests/models/test_psanet_mmseg.py.
"""

import pytest
import torch

from attnblocks import PointwiseSpatialAttention
from attnblocks.functional import psa_mask
from tests.layers.nonlocal_family_reference import reference_psa
from tests.layers.test_spatial_blocks import randomise
from tests.reference import relative_error

TYPES = ("collect", "distribute", "bi-direction")


def block_and_reference(channels=16, mask_size=(5, 7), seed=0, inter_channels=None, **options):
    block = PointwiseSpatialAttention(channels, mask_size, inter_channels, **options)
    block = randomise(block, seed).double().eval()
    return block, lambda x: reference_psa(x, block.state_dict(), block.mask_size, **options)


@pytest.mark.parametrize("psa_type", TYPES)
@pytest.mark.parametrize(
    "size", [(9, 13), (8, 12), (9, 12), (7, 1), (1, 1)],
    ids=["odd-odd", "even-even", "odd-even", "odd-one", "one-one"],
)  # fmt: skip
def test_shrinks_and_attends_as_mmseg(psa_type, size):
    # Both sides odd: ((H - 1) // 2 + 1, ...) with align_corners=True; else H // 2, False.
    block, reference = block_and_reference(psa_type=psa_type, seed=len(psa_type))
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    out = block(x)
    assert out.shape == x.shape
    assert relative_error(out, reference(x)) < 1e-12


@pytest.mark.parametrize(
    "options",
    [
        {"shrink_factor": 1, "align_corners": True},
        {"shrink_factor": 3},
        {"normalization_factor": None, "psa_softmax": False},
        {"psa_type": "collect", "inter_channels": 3},
    ],
    ids=["no-shrink-aligned", "shrink3", "raw-normalised", "collect-inter3"],
)
def test_options_as_mmseg(options):
    block, reference = block_and_reference(mask_size=(4, 6), **options)
    x = torch.randn(1, 16, 11, 9, dtype=torch.float64)
    assert relative_error(block(x), reference(x)) < 1e-12


@pytest.mark.parametrize("psa_type", TYPES)
def test_compact_masks_as_mmseg(psa_type):
    # The shrunk 5 x 6 grid of a 9 x 11 map: the mask convolution predicts 30 x 30 weights.
    block, reference = block_and_reference(mask_size=(5, 6), psa_type=psa_type, compact=True)
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    assert relative_error(block(x), reference(x)) < 1e-12
    with pytest.raises(ValueError, match=r"compact PSA needs mask_size with h_m \* w_m = h \* w"):
        block(torch.randn(2, 16, 9, 13, dtype=torch.float64))


def test_float32_output_and_gradients_match_float64():
    block, _ = block_and_reference(seed=3)
    x = torch.randn(2, 16, 9, 13, dtype=torch.float64, requires_grad=True)
    out64 = block(x)
    grads64 = torch.autograd.grad(out64.square().sum(), (x, *block.parameters()))
    block32, x32 = block.float(), x.detach().float().requires_grad_()
    out32 = block32(x32)
    grads32 = torch.autograd.grad(out32.square().sum(), (x32, *block32.parameters()))
    assert relative_error(out32, out64) < 1e-5
    for ours, expected in zip(grads32, grads64):
        assert relative_error(ours, expected) < 1e-4


@pytest.mark.parametrize("direction", ["collect", "distribute"])
def test_attention_map_is_a_pixels_softmax_weights(direction):
    block = randomise(PointwiseSpatialAttention(8, (5, 3), shrink_factor=2), seed=2).eval()
    x = torch.randn(2, 8, 9, 11)  # shrunk: 5 x 6
    assert block.shrunk_size(9, 11) == (5, 6, True)
    maps = block.attention_map(x, [(0, 0), (4, 5), (2, 3)], direction=direction)
    assert maps.shape == (2, 3, 5, 6)
    torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(2, 3))
    # Recomputed from the block's own parts: the mask logits on the shrunk reduced features.
    reduce, mask = (block.reduce, block.mask) if direction == "collect" else (
        block.reduce_p, block.mask_p)  # fmt: skip
    with torch.no_grad():
        reduced = torch.nn.functional.interpolate(reduce(x), size=(5, 6), mode="bilinear",
                                                  align_corners=True)  # fmt: skip
        weights = psa_mask(mask(reduced), direction, (5, 3)).softmax(dim=1)  # (B, q, h, w)
    expected = torch.stack([weights[:, :, r, c] for r, c in [(0, 0), (4, 5), (2, 3)]], dim=1)
    torch.testing.assert_close(maps.flatten(2), expected)
    if direction == "collect":  # the default branch of a bi-direction block
        assert torch.equal(block.attention_map(x, [(4, 5)]), maps[:, 1:2])
    with pytest.raises(ValueError, match=r"points \[\[5, 0\]\] lie outside the 5 x 6"):
        block.attention_map(x, [(5, 0)], direction=direction)


def test_layout_is_mmsegs_psahead_attention():
    block = PointwiseSpatialAttention(64, (3, 5), inter_channels=8)
    shapes = {key: tuple(value.shape) for key, value in block.state_dict().items()}
    assert shapes["reduce.conv.weight"] == (8, 64, 1, 1)
    assert shapes["mask.0.conv.weight"] == (8, 8, 1, 1) and "mask.0.norm.running_var" in shapes
    assert shapes["mask.1.weight"] == (15, 8, 1, 1) and "mask.1.bias" not in shapes
    assert shapes["reduce_p.conv.weight"] == (8, 64, 1, 1)
    assert shapes["mask_p.1.weight"] == (15, 8, 1, 1)
    assert shapes["proj.conv.weight"] == (64, 16, 1, 1) and block.proj.conv.padding == (1, 1)
    single = PointwiseSpatialAttention(64, 3, psa_type="distribute")
    assert single.mask_size == (3, 3) and single.inter_channels == 16
    assert not hasattr(single, "reduce_p") and single.proj.conv.in_channels == 16


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown psa_type 'both'"):
        PointwiseSpatialAttention(16, 3, psa_type="both")
    with pytest.raises(ValueError, match="mask_size must be a positive int or a pair"):
        PointwiseSpatialAttention(16, (3, 0))
    with pytest.raises(ValueError, match="shrink_factor must be a positive int, got 0"):
        PointwiseSpatialAttention(16, 3, shrink_factor=0)
    with pytest.raises(ValueError, match="normalization_factor must be a positive number"):
        PointwiseSpatialAttention(16, 3, normalization_factor=0)
    with pytest.raises(ValueError, match="inter_channels must be a positive int"):
        PointwiseSpatialAttention(16, 3, inter_channels=0)
    block = PointwiseSpatialAttention(16, 3, psa_type="collect")
    with pytest.raises(ValueError, match="unknown direction of this collect block 'distribute'"):
        block.attention_map(torch.randn(1, 16, 4, 4), [(0, 0)], direction="distribute")

"""InterlacedSparseSelfAttention against ISA written from its definition (explicit loops over
interlaced and local groups, mmseg's padding) in float64, on mmseg's keys."""

import pytest
import torch

from attnblocks import InterlacedSparseSelfAttention
from tests.layers.mmseg_attention_reference import interlaced_sparse_attention, mmseg_names
from tests.layers.test_spatial_blocks import randomise
from tests.reference import relative_error


def reference(block, x):
    state = mmseg_names({k: v.double() for k, v in block.state_dict().items()})
    return interlaced_sparse_attention(x.double(), state, block.key_channels, block.down_factor)


@pytest.mark.parametrize(
    "shape, down_factor",
    [
        ((2, 16, 9, 13), (8, 8)),  # the fixture's map: padded by 7 rows and 3 columns
        ((1, 16, 7, 5), (2, 3)),  # odd sizes, uneven padding on both axes
        ((3, 16, 6, 6), (3, 2)),  # divisible: no padding
        ((1, 16, 1, 1), (8, 8)),  # one pixel in a padded 8 x 8 group
        ((2, 16, 5, 11), (1, 4)),  # a one-row local group
    ],
)
@pytest.mark.parametrize("backend", ["bmm", "chunked"])
def test_matches_the_definition_on_odd_sizes(shape, down_factor, backend):
    block = randomise(
        InterlacedSparseSelfAttention(16, 8, down_factor, backend=backend, chunk_size=3)
    ).eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    out = block(x)
    assert out.shape == x.shape
    assert relative_error(out, reference(block, x)) < 1e-5


def test_sdpa_backend_and_padding_split():
    block = randomise(InterlacedSparseSelfAttention(16, 8, (4, 4), backend="sdpa")).eval()
    x = torch.randn(2, 16, 10, 7)
    assert relative_error(block(x), reference(block, x)) < 1e-5
    # mmseg's split: pad // 2 before, the rest after
    assert block.padding(10, 7) == (0, 1, 1, 1)
    assert block.padding(9, 13) == (1, 2, 1, 2)
    assert InterlacedSparseSelfAttention(16, down_factor=(8, 8)).padding(9, 13) == (1, 2, 3, 4)


def test_state_dict_is_isaheads_relations():
    keys = set(InterlacedSparseSelfAttention(16).state_dict())
    for relation in ("global_relation", "local_relation"):
        for name in ("key_project", "query_project"):
            for index in (0, 1):
                assert f"{relation}.{name}.{index}.conv.weight" in keys
                assert f"{relation}.{name}.{index}.norm.running_var" in keys
        assert {f"{relation}.value_project.weight", f"{relation}.value_project.bias",
                f"{relation}.output_project.conv.weight",
                f"{relation}.output_project.norm.bias"} <= keys  # fmt: skip
    assert not any("out_project" in key for key in keys)
    assert len(keys) == 2 * (2 * 2 * 6 + 2 + 6)


def test_gradcheck_float64():
    block = randomise(InterlacedSparseSelfAttention(4, 2, (2, 2), dtype=torch.float64)).eval()
    x = torch.randn(1, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    names, params = zip(*block.named_parameters())

    def run(x, *values):
        return torch.func.functional_call(block, dict(zip(names, values)), (x,))

    params = tuple(p.detach().requires_grad_() for p in params)
    assert torch.autograd.gradcheck(run, (x, *params), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_autocast_with_large_activations_is_finite_and_accurate(dtype):
    block = randomise(InterlacedSparseSelfAttention(16, 8, (4, 4)), seed=2).eval()
    x = 60 * torch.randn(1, 16, 6, 7, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=dtype):
        out = block(x)
    assert torch.isfinite(out).all()
    assert relative_error(out, reference(block, x)) < 2e-2


def test_half_parameters_and_inputs_are_finite():
    block = randomise(InterlacedSparseSelfAttention(16, 8, (4, 4)), seed=4).eval()
    x = 60 * torch.randn(1, 16, 6, 7, generator=torch.Generator().manual_seed(4))
    out = block.to(torch.bfloat16)(x.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_attention_maps_live_on_the_pixels_groups():
    block = randomise(InterlacedSparseSelfAttention(16, 8, (2, 3)), seed=3).double().eval()
    x = torch.randn(1, 16, 5, 7, dtype=torch.float64)  # padded to 6 x 9: top 0, left 1
    maps = block.attention_map(x, [(0, 0), (4, 6)])
    left, _, top, _ = block.padding(5, 7)
    assert (left, top) == (1, 0)
    assert maps.long_range.shape == maps.short_range.shape == (1, 2, 6, 9)
    torch.testing.assert_close(maps.long_range.sum((-2, -1)), torch.ones(1, 2, dtype=torch.float64))
    torch.testing.assert_close(
        maps.short_range.sum((-2, -1)), torch.ones(1, 2, dtype=torch.float64)
    )
    # pixel (0, 0) is (0, 1) padded: its interlaced group is rows 0, 2, 4, columns 1, 4, 7;
    # its local group the 2 x 3 window at rows 0-1, columns 0-2
    long_support = torch.zeros(6, 9, dtype=torch.bool)
    long_support[0::2, 1::3] = True
    assert ((maps.long_range[0, 0] != 0) == long_support).all()
    short_support = torch.zeros(6, 9, dtype=torch.bool)
    short_support[0:2, 0:3] = True
    assert ((maps.short_range[0, 0] != 0) == short_support).all()
    # the long-range row is the global relation's softmax on that interlaced group
    group = block.global_relation.attention_map(
        torch.nn.functional.pad(x, (1, 1, 0, 1))[:, :, 0::2, 1::3], [(0, 0)]
    )
    torch.testing.assert_close(maps.long_range[0, 0, 0::2, 1::3], group[0, 0])


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match=r"down_factor must be \(loc_h, loc_w\), got \(8,\)"):
        InterlacedSparseSelfAttention(16, down_factor=(8,))
    with pytest.raises(ValueError, match="each of down_factor must be a positive int, got 0"):
        InterlacedSparseSelfAttention(16, down_factor=(8, 0))
    with pytest.raises(ValueError, match="channels must be a positive int, got 0"):
        InterlacedSparseSelfAttention(0)
    block = InterlacedSparseSelfAttention(16)
    with pytest.raises(ValueError, match="InterlacedSparseSelfAttention was built for 16 channels"):
        block(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="non-empty spatial map, got H x W = 0 x 4"):
        block(torch.randn(1, 16, 0, 4))

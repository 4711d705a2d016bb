"""ANN's AFNB and APNB against float64 transcriptions of mmseg's ann_head.py on its keys."""

import pytest
import torch

from attnblocks import AsymmetricFusionNonLocal, AsymmetricPyramidNonLocal
from attnblocks.layers import PyramidPooling
from tests.layers.mmseg_attention_reference import afnb, apnb, mmseg_names, pyramid_pool
from tests.layers.test_spatial_blocks import randomise
from tests.reference import relative_error

POOLS = (1, 3, 6)


def fusion(**kwargs):
    return AsymmetricFusionNonLocal(12, 16, 8, key_pool_scales=POOLS, **kwargs)


def pyramid(**kwargs):
    return AsymmetricPyramidNonLocal(16, 8, key_pool_scales=POOLS, **kwargs)


def maps(batch, height, width, seed=1, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    high = scale * torch.randn(batch, 16, height, width, generator=gen)
    low = scale * torch.randn(batch, 12, height + 1, width + 2, generator=gen)
    return low, high


def reference_state(block):
    return mmseg_names({k: v.double() for k, v in block.state_dict().items()})


@pytest.mark.parametrize("backend", ["bmm", "chunked", "sdpa"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 4, 6), (2, 9, 13)])
def test_fusion_matches_mmseg_transcription(backend, shape):
    block = randomise(fusion(query_scales=(1, 1), backend=backend, chunk_size=5)).eval()
    low, high = maps(*shape)
    out = block(low, high)
    expected = afnb(low.double(), high.double(), reference_state(block), 8, POOLS, num_stages=2)
    assert out.shape == (shape[0], 16, *shape[1:])
    assert relative_error(out, expected) < 1e-5


@pytest.mark.parametrize("backend", ["bmm", "chunked", "sdpa"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 4, 6), (2, 9, 13)])
def test_pyramid_matches_mmseg_transcription(backend, shape):
    block = randomise(pyramid(query_scales=(1, 1), backend=backend, chunk_size=5)).eval()
    _, x = maps(*shape)
    out = block(x)
    expected = apnb(x.double(), reference_state(block), 8, POOLS, num_stages=2)
    assert out.shape == x.shape
    assert relative_error(out, expected) < 1e-5


def test_pyramid_pooling_is_ppm_concat_and_has_no_parameters():
    x = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    pooling = PyramidPooling(POOLS)
    torch.testing.assert_close(pooling(x), pyramid_pool(x, POOLS))
    assert pooling(x).shape == (2, 5, 1 + 9 + 36) and not list(pooling.parameters())


def test_state_dicts_have_mmsegs_keys():
    # mmseg's keys of AFNB / APNB with one stage (from the ANN fixture's key list), bn -> norm.
    projections = ("key_project.conv.weight", "key_project.norm.weight", "key_project.norm.bias",
                   "key_project.norm.running_mean", "key_project.norm.running_var",
                   "key_project.norm.num_batches_tracked")  # fmt: skip
    shared = {f"stages.0.{p}" for p in projections}
    shared |= {f"stages.0.{n}.{leaf}" for n in ("value_project", "out_project")
               for leaf in ("weight", "bias")}  # fmt: skip
    shared |= {"bottleneck.conv.weight", "bottleneck.norm.weight", "bottleneck.norm.bias",
               "bottleneck.norm.running_mean", "bottleneck.norm.running_var",
               "bottleneck.norm.num_batches_tracked"}  # fmt: skip
    queries = {f"stages.0.{p.replace('key', 'query')}" for p in projections}
    assert set(fusion().state_dict()) == shared | queries
    assert set(pyramid().state_dict()) == shared  # APNB's one key/query projection


@pytest.mark.parametrize("factory", [fusion, pyramid], ids=["fusion", "pyramid"])
def test_gradcheck_float64(factory):
    block = randomise(factory(dtype=torch.float64)).eval()
    low, high = (t.double().requires_grad_() for t in maps(2, 3, 4))
    names, params = zip(*block.named_parameters())
    inputs = (low, high) if factory is fusion else (high,)

    def run(*args):
        values = dict(zip(names, args[len(inputs) :]))
        return torch.func.functional_call(block, values, args[: len(inputs)])

    params = tuple(p.detach().requires_grad_() for p in params)
    assert torch.autograd.gradcheck(run, (*inputs, *params), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_autocast_with_large_activations_is_finite_and_accurate(dtype):
    block = randomise(fusion(), seed=2).eval()
    low, high = maps(1, 6, 7, seed=2, scale=60.0)
    with torch.autocast("cpu", dtype=dtype):
        out = block(low, high)
    assert torch.isfinite(out).all()
    expected = afnb(low.double(), high.double(), reference_state(block), 8, POOLS)
    assert relative_error(out, expected) < 2e-2


def test_half_parameters_and_inputs_are_finite():
    block = randomise(pyramid(), seed=4).eval().to(torch.bfloat16)
    out = block(maps(1, 6, 7, seed=4, scale=60.0)[1].bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_attention_maps_are_softmax_rows_over_the_pyramid():
    block = randomise(fusion(), seed=3).eval()
    low, high = maps(2, 5, 6, seed=3)
    weights = block.attention_map(low, high, [(0, 0), (4, 5)])
    assert weights.shape == (2, 2, 1 + 9 + 36)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2))
    pyramid_weights = pyramid().attention_map(high, [(1, 2)])
    assert pyramid_weights.shape == (2, 1, 46)
    with pytest.raises(ValueError, match=r"points \[\[5, 0\]\] lie outside the 5 x 6"):
        block.attention_map(low, high, [(5, 0)])


def test_defaults_are_mmseg_anns_widths():
    block = AsymmetricPyramidNonLocal(64)
    assert (block.key_channels, block.out_channels) == (32, 64)
    assert block.stages[0].key_downsample.scales == (1, 3, 6, 8)
    fusion_block = AsymmetricFusionNonLocal(32, 64)
    assert (fusion_block.key_channels, fusion_block.out_channels) == (8, 64)


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match=r"query_scales must all be 1, got \(1, 2\)"):
        pyramid(query_scales=(1, 2))
    with pytest.raises(ValueError, match=r"query_scales must name at least one scale, got \(\)"):
        fusion(query_scales=())
    with pytest.raises(ValueError, match="each of key_pool_scales must be a positive int, got 0"):
        AsymmetricPyramidNonLocal(16, key_pool_scales=(1, 0))
    with pytest.raises(ValueError, match="low_channels must be a positive int, got 0"):
        AsymmetricFusionNonLocal(0, 16)
    low, high = maps(1, 4, 4)
    with pytest.raises(ValueError, match="AsymmetricFusionNonLocal low was built for 12 channels"):
        fusion()(high, high)
    with pytest.raises(ValueError, match="AsymmetricPyramidNonLocal was built for 16 channels"):
        pyramid()(low)


def test_fusion_with_two_inputs_exports_and_runs_in_onnxruntime(tmp_path):
    block = randomise(fusion()).eval()
    args = maps(2, 5, 7)
    with torch.no_grad():
        expected = block(*args)
        compiled = torch.compile(block, backend="aot_eager", fullgraph=True)(*args)
        exported = torch.export.export(block, args).module()(*args)
    torch.testing.assert_close(compiled, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(exported, expected, rtol=1e-5, atol=1e-6)
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime comes with the test extra")
    pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript (test extra)")
    torch.onnx.export(block, args, dynamo=True).save(str(tmp_path / "afnb.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "afnb.onnx"))
    names = [i.name for i in session.get_inputs()]
    (out,) = session.run(None, {name: t.numpy() for name, t in zip(names, args)})
    torch.testing.assert_close(torch.as_tensor(out), expected, rtol=1e-4, atol=1e-5)

"""The spatial blocks through torch.compile, torch.export and ONNX give the eager result."""

from functools import partial

import pytest
import torch

from attnblocks import (
    AsymmetricPyramidNonLocal,
    ContextBlock,
    CrissCrossAttention,
    DisentangledNonLocal2d,
    ExpectationMaximizationAttention,
    InterlacedSparseSelfAttention,
    NonLocal2d,
    PointwiseSpatialAttention,
)
from tests.layers.test_spatial_blocks import randomise

BLOCKS = {
    "criss_cross": partial(CrissCrossAttention, recurrence=2),
    "non_local_embedded_gaussian_chunked": partial(NonLocal2d, backend="chunked", chunk_size=16),
    "non_local_gaussian_sub_sdpa": partial(
        NonLocal2d, mode="gaussian", sub_sample=True, backend="sdpa"
    ),
    "non_local_dot_product": partial(NonLocal2d, mode="dot_product"),
    "non_local_concatenation": partial(NonLocal2d, mode="concatenation", sub_sample=True),
    "context": partial(ContextBlock, fusion=("channel_add", "channel_mul")),
    # SelfAttentionBlock: through ISA (one input) here, AFNB (two) in test_asymmetric_non_local
    "ann_pyramid": partial(AsymmetricPyramidNonLocal, key_pool_scales=(1, 2)),
    # 9 x 11 maps pad to 12 x 12 (4 x 3 groups of 3 x 4)
    "isa": partial(InterlacedSparseSelfAttention, down_factor=(3, 4)),
    "ema": partial(ExpectationMaximizationAttention, num_bases=8),
    "dnl_embedded_gaussian_chunked": partial(
        DisentangledNonLocal2d, backend="chunked", chunk_size=16
    ),
    # 9 x 11 maps shrink to 5 x 6 (align_corners=True): psa_mask with a 5 x 4 mask
    "psa_bi_direction": partial(PointwiseSpatialAttention, mask_size=(5, 4)),
}


def block_and_input(name):
    torch.manual_seed(0)
    block = randomise(BLOCKS[name](16)).eval()
    return block, torch.randn(2, 16, 9, 11, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_torch_export(name):
    block, x = block_and_input(name)
    with torch.no_grad():
        expected = block(x)
        exported = torch.export.export(block, (x,)).module()(x)
    torch.testing.assert_close(exported, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_torch_compile(name):
    block, x = block_and_input(name)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(block)(x), block(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_onnx_export_runs_in_onnxruntime(name, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime comes with the test extra")
    pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript (test extra)")
    block, x = block_and_input(name)
    with torch.no_grad():
        expected = block(x)
    torch.onnx.export(block, (x,), dynamo=True).save(str(tmp_path / "block.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "block.onnx"))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.as_tensor(out), expected, rtol=1e-4, atol=1e-5)

"""SpatialGather and ObjectContextBlock (OCRNet) against mmseg's forward written out in float64.

That they compute mmseg's OCRHead inside a whole model is tests/models/test_ocrnet_mmseg.py
(the OCRNet fixtures).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnblocks import ObjectContextBlock, SpatialGather
from tests.layers.test_spatial_blocks import randomise
from tests.reference import relative_error


def reference_gather(features, logits, scale=1.0):
    """mmseg's SpatialGatherModule.forward: (B, C, K, 1) regions."""
    b, k = logits.shape[:2]
    probs = F.softmax(scale * logits.reshape(b, k, -1), dim=2)  # over positions
    feats = features.reshape(b, features.shape[1], -1).permute(0, 2, 1)
    return torch.matmul(probs, feats).permute(0, 2, 1).unsqueeze(3)


def conv_module(x, state, prefix):
    """mmcv's ConvModule in eval mode: bias-free conv, BatchNorm with running statistics, ReLU."""
    y = F.conv2d(x, state[f"{prefix}.conv.weight"])
    y = F.batch_norm(
        y, state[f"{prefix}.norm.running_mean"], state[f"{prefix}.norm.running_var"],
        state[f"{prefix}.norm.weight"], state[f"{prefix}.norm.bias"], training=False, eps=1e-5,
    )  # fmt: skip
    return y.relu()


def reference_object_context(x, regions, state):
    """mmseg's ObjectAttentionBlock.forward (scale 1): SelfAttentionBlock, then the bottleneck."""
    state = {key: value.to(x.dtype) for key, value in state.items()}
    b, _, h, w = x.shape

    def project(t, name, convs):
        for index in range(convs):
            t = conv_module(t, state, f"attention.{name}" + (f".{index}" if convs > 1 else ""))
        return t.reshape(b, t.shape[1], -1)

    query = project(x, "query_project", 2).permute(0, 2, 1)  # (B, N, D)
    key = project(regions, "key_project", 2)  # (B, D, K)
    value = project(regions, "value_project", 1).permute(0, 2, 1)  # (B, K, D)
    sim = F.softmax(key.shape[1] ** -0.5 * torch.matmul(query, key), dim=-1)
    context = torch.matmul(sim, value).permute(0, 2, 1).reshape(b, -1, h, w)
    context = conv_module(context, state, "attention.out_project")
    return conv_module(torch.cat([context, x], dim=1), state, "bottleneck")


def random_block(channels=16, inter=8, seed=0, **kwargs):
    block = randomise(ObjectContextBlock(channels, inter, **kwargs), seed).eval()
    gen = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():  # running statistics away from (0, 1), as a trained model has
        for module in block.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.2 * torch.randn(module.num_features, generator=gen))
                module.running_var.copy_(1 + torch.rand(module.num_features, generator=gen))
    return block


def double_state(block):
    return {key: value.double() for key, value in block.state_dict().items()}


# ---------------------------------------------------------------------------------------- gather


@pytest.mark.parametrize(
    "shape, classes", [((1, 8, 1, 1), 1), ((3, 8, 7, 4), 5), ((2, 16, 9, 13), 19)]
)
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_gather_matches_mmseg_for_any_size(shape, classes, scale):
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(shape, generator=gen)
    logits = 3 * torch.randn(shape[0], classes, *shape[2:], generator=gen)
    regions = SpatialGather(scale)(features, logits)
    assert regions.shape == (shape[0], shape[1], classes, 1) and regions.dtype == features.dtype
    reference = reference_gather(features.double(), logits.double(), scale)
    assert relative_error(regions, reference) < 1e-6


def test_gather_masks_sum_to_one_over_positions():
    features = torch.full((2, 4, 5, 6), 3.0)  # a constant map: every region is that constant
    regions = SpatialGather()(features, torch.randn(2, 7, 5, 6))
    torch.testing.assert_close(regions, torch.full((2, 4, 7, 1), 3.0))


def test_gather_gradcheck_float64():
    features = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(2, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SpatialGather(1.5), (features, logits))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gather_under_autocast_is_finite_and_accurate(dtype):
    gen = torch.Generator().manual_seed(2)
    features = 60 * torch.randn(1, 16, 6, 7, generator=gen)
    logits = 300 * torch.randn(1, 19, 6, 7, generator=gen)  # exp(300) overflows any half dtype
    with torch.autocast("cpu", dtype=dtype):
        regions = SpatialGather()(features, logits)
    assert torch.isfinite(regions).all()
    reference = reference_gather(features.double(), logits.double())
    assert relative_error(regions, reference) < 2e-2


def test_gather_in_half_precision_is_finite():
    features = (60 * torch.randn(1, 16, 6, 7)).to(torch.bfloat16)
    regions = SpatialGather()(features, (300 * torch.randn(1, 19, 6, 7)).to(torch.bfloat16))
    assert regions.dtype == torch.bfloat16 and torch.isfinite(regions).all()


def test_gather_bad_inputs():
    gather = SpatialGather()
    with pytest.raises(ValueError, match=r"logits must be a 4D tensor \(B, K, H, W\)"):
        gather(torch.randn(1, 4, 5, 6), torch.randn(1, 5, 6))
    with pytest.raises(ValueError, match=r"one batch and spatial size, got features \(1, 4, 5, 6\) "
                                         r"and logits \(1, 3, 5, 7\)"):  # fmt: skip
        gather(torch.randn(1, 4, 5, 6), torch.randn(1, 3, 5, 7))
    with pytest.raises(ValueError, match="features must be floating-point"):
        gather(torch.ones(1, 4, 5, 6, dtype=torch.long), torch.randn(1, 3, 5, 6))
    with pytest.raises(ValueError, match="non-empty maps"):
        gather(torch.randn(1, 4, 0, 6), torch.randn(1, 3, 0, 6))
    for scale in (0, -1.0, True, "1"):
        with pytest.raises(ValueError, match="scale must be a positive number"):
            SpatialGather(scale)


# ---------------------------------------------------------------------- object context block


@pytest.mark.parametrize(
    "batch, height, width, classes", [(1, 1, 1, 1), (3, 7, 4, 5), (2, 9, 13, 19)]
)
def test_block_matches_mmseg_for_any_size(batch, height, width, classes):
    block = random_block()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 16, height, width, generator=gen)
    regions = torch.randn(batch, 16, classes, 1, generator=gen)
    out = block(x, regions)
    assert out.shape == x.shape and out.dtype == x.dtype
    reference = reference_object_context(x.double(), regions.double(), double_state(block))
    assert relative_error(out, reference) < 1e-5


@pytest.mark.parametrize("backend", ["bmm", "chunked", "sdpa"])
def test_every_backend_gives_the_reference(backend):
    block = random_block(backend=backend, chunk_size=8)
    x, regions = torch.randn(2, 16, 9, 11), torch.randn(2, 16, 19, 1)
    reference = reference_object_context(x.double(), regions.double(), double_state(block))
    assert relative_error(block(x, regions), reference) < 1e-5


def test_block_gradcheck_float64():
    block = random_block(4, 2).double()
    x = torch.randn(2, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    regions = torch.randn(2, 4, 3, 1, dtype=torch.float64, requires_grad=True)
    names, params = zip(*block.named_parameters())

    def run(x, regions, *values):
        return torch.func.functional_call(block, dict(zip(names, values)), (x, regions))

    # Non-differentiable points (ReLU kinks) are avoided by random inputs.
    inputs = (x, regions, *(p.detach().requires_grad_() for p in params))
    assert torch.autograd.gradcheck(run, inputs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_block_under_autocast_is_finite_and_accurate(dtype):
    block = random_block(seed=2)
    gen = torch.Generator().manual_seed(2)
    x, regions = 60 * torch.randn(1, 16, 6, 7, generator=gen), 60 * torch.randn(1, 16, 19, 1)
    with torch.autocast("cpu", dtype=dtype):
        out = block(x, regions)
    assert torch.isfinite(out).all()
    reference = reference_object_context(x.double(), regions.double(), double_state(block))
    assert relative_error(out, reference) < 2e-2


def test_block_half_parameters_and_inputs_are_finite():
    block = random_block(seed=4).to(torch.bfloat16)
    x, regions = 60 * torch.randn(1, 16, 6, 7), 60 * torch.randn(1, 16, 19, 1)
    out = block(x.to(torch.bfloat16), regions.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_block_layout_is_mmsegs():
    block = ObjectContextBlock(512)
    shapes = {key: tuple(value.shape) for key, value in block.state_dict().items()}
    assert shapes["attention.query_project.0.conv.weight"] == (256, 512, 1, 1)
    assert shapes["attention.key_project.1.conv.weight"] == (256, 256, 1, 1)
    assert shapes["attention.value_project.conv.weight"] == (256, 512, 1, 1)
    assert shapes["attention.out_project.conv.weight"] == (512, 256, 1, 1)
    assert shapes["bottleneck.conv.weight"] == (512, 1024, 1, 1)
    assert len([k for k in shapes if k.endswith("conv.weight")]) == 7  # no biases, 7 units


def test_region_attention_maps_sum_to_one_over_regions():
    block = random_block()
    x, regions = torch.randn(2, 16, 5, 6), torch.randn(2, 16, 7, 1)
    maps = block.region_attention(x, regions)
    assert maps.shape == (2, 7, 5, 6)
    torch.testing.assert_close(maps.sum(dim=1), torch.ones(2, 5, 6))
    # the map at one pixel is that pixel's softmax over regions, as the reference computes it
    state = double_state(block)
    query = x.double()
    for index in range(2):
        prefix = f"attention.query_project.{index}"
        query = conv_module(query, state, prefix)
    key = regions.double()
    for index in range(2):
        key = conv_module(key, state, f"attention.key_project.{index}")
    energy = torch.einsum("bd,bdk->bk", query[:, :, 3, 4], key[..., 0]) / 8**0.5
    torch.testing.assert_close(maps[:, :, 3, 4].double(), energy.softmax(dim=-1))


def test_block_factory_kwargs_and_bad_inputs():
    block = ObjectContextBlock(16, 8, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in block.parameters())
    block = ObjectContextBlock(16, 8)
    with pytest.raises(ValueError, match=r"ObjectContextBlock input must be a 4D tensor"):
        block(torch.randn(16, 4, 4), torch.randn(1, 16, 3, 1))
    with pytest.raises(ValueError, match="ObjectContextBlock was built for 16 channels, got an "
                                         "input with 8"):  # fmt: skip
        block(torch.randn(1, 8, 4, 4), torch.randn(1, 16, 3, 1))
    with pytest.raises(ValueError, match="ObjectContextBlock regions was built for 16 channels"):
        block(torch.randn(1, 16, 4, 4), torch.randn(1, 8, 3, 1))
    with pytest.raises(ValueError, match=r"one batch size, got x \(2, 16, 4, 4\) and regions"):
        block(torch.randn(2, 16, 4, 4), torch.randn(1, 16, 3, 1))
    with pytest.raises(ValueError, match="non-empty spatial map, got H x W = 0 x 4"):
        block(torch.randn(1, 16, 0, 4), torch.randn(1, 16, 3, 1))
    with pytest.raises(ValueError, match="channels must be a positive int, got 0"):
        ObjectContextBlock(0)
    with pytest.raises(ValueError, match="inter_channels must be a positive int, got 0"):
        ObjectContextBlock(16, 0)


# -------------------------------------------------------------- compile, export, ONNX (both)


class GatherThenAttend(nn.Module):
    """SpatialGather then ObjectContextBlock, as OCRNet's head runs them."""

    def __init__(self, backend):
        super().__init__()
        self.gather = SpatialGather()
        self.block = random_block(backend=backend, chunk_size=16)

    def forward(self, x, logits):
        return self.block(x, self.gather(x, logits))


def ocr_and_inputs(backend):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    inputs = (torch.randn(2, 16, 9, 11, generator=gen), torch.randn(2, 5, 9, 11, generator=gen))
    return GatherThenAttend(backend).eval(), inputs


def test_torch_export():
    module, inputs = ocr_and_inputs("chunked")  # SelfAttentionBlock's tests export every backend
    with torch.no_grad():
        expected = module(*inputs)
        exported = torch.export.export(module, inputs).module()(*inputs)
    torch.testing.assert_close(exported, expected, rtol=1e-4, atol=1e-5)


def test_torch_compile_as_one_graph():
    module, inputs = ocr_and_inputs("auto")
    # aot_eager: the whole graph is captured (fullgraph); inductor's code generation is not tested.
    with torch.no_grad():
        compiled = torch.compile(module, backend="aot_eager", fullgraph=True)(*inputs)
        torch.testing.assert_close(compiled, module(*inputs), rtol=1e-4, atol=1e-5)


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime comes with the test extra")
    pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript (test extra)")
    module, inputs = ocr_and_inputs("bmm")
    with torch.no_grad():
        expected = module(*inputs)
    torch.onnx.export(module, inputs, dynamo=True).save(str(tmp_path / "ocr.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "ocr.onnx"))
    names = [each.name for each in session.get_inputs()]
    (out,) = session.run(None, {name: t.numpy() for name, t in zip(names, inputs)})
    torch.testing.assert_close(torch.as_tensor(out), expected, rtol=1e-4, atol=1e-5)

"""DisentangledNonLocal2d: mmseg's DNL forward, backends, memory, maps, timm's protocol, checks.

The shared block checks (any size, float64 gradcheck, autocast, bad inputs) are in
test_spatial_blocks.py; the fixture of mmseg's DNLNet in tests/models/test_dnlnet_mmseg.py.
"""

from functools import partial

import pytest
import timm
import torch

from attnblocks import DisentangledNonLocal2d
from tests.layers.nonlocal_family_reference import reference_dnl
from tests.layers.test_spatial_blocks import randomise
from tests.reference import LargestTensor, relative_error

MODES = ("embedded_gaussian", "dot_product")
# Biases whose true gradient is 0: whitening removes any constant from the queries and keys,
# and the unary softmax ignores a shift of all its logits. Each is checked against its weight's.
TRUE_ZERO = {"theta.bias": "theta.weight", "phi.bias": "phi.weight",
             "conv_mask.bias": "conv_mask.weight"}  # fmt: skip


def test_starts_as_identity_with_mmsegs_parameters():
    x = torch.randn(2, 16, 5, 7)
    for norm_layer in (None, torch.nn.BatchNorm2d):
        block = DisentangledNonLocal2d(16, norm_layer=norm_layer)
        torch.testing.assert_close(block(x), x, rtol=0, atol=0)
        names = {name.split(".")[0] for name, _ in block.named_parameters()}
        assert names == {"g", "theta", "phi", "conv_mask", "conv_out"}
        assert block.conv_mask.weight.shape == (1, 16, 1, 1) and block.conv_mask.bias is not None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("options", [{}, {"use_scale": False, "temperature": 0.2}],
                         ids=["defaults", "no-scale-t0.2"])  # fmt: skip
def test_matches_mmsegs_forward_with_its_norm(mode, options):
    block = DisentangledNonLocal2d(16, mode=mode, norm_layer=torch.nn.BatchNorm2d, **options)
    block = randomise(block, seed=5).double().eval()
    x = torch.randn(3, 16, 6, 5, dtype=torch.float64)
    expected = reference_dnl(x, block.state_dict(), mode, **options)
    assert relative_error(block(x), expected) < 1e-12


@pytest.mark.parametrize("backend", ["chunked", "sdpa"])
def test_memory_efficient_backends_give_bmms_output_and_gradients(backend):
    reference = randomise(DisentangledNonLocal2d(16, backend="bmm", zero_init_last=False))
    block = DisentangledNonLocal2d(16, backend=backend, chunk_size=7, zero_init_last=False)
    block.load_state_dict(reference.state_dict())
    x = torch.randn(2, 16, 6, 9, requires_grad=True)
    results = []
    for module in (reference, block):
        out = module(x)
        names, params = zip(*module.named_parameters())
        grads = torch.autograd.grad(out.square().sum(), (x, *params))
        results.append(dict(zip(("output", "x", *names), (out, *grads))))
    for name, expected in results[0].items():
        if name in TRUE_ZERO:
            assert results[1][name].norm() < 1e-5 * results[1][TRUE_ZERO[name]].norm(), name
        else:
            assert relative_error(results[1][name], expected) < 1e-5, name


@pytest.mark.parametrize("mode", MODES)
def test_training_step_without_the_n_by_n_matrix(mode):
    block = DisentangledNonLocal2d(16, mode=mode, backend="chunked", chunk_size=64,
                                   zero_init_last=False)  # fmt: skip
    x = torch.randn(1, 16, 32, 32, requires_grad=True)  # N = 1024
    with LargestTensor() as probe:
        block(x).square().sum().backward()
    assert probe.largest < 1024 * 1024 // 8


@pytest.mark.parametrize("mode", MODES)
def test_attention_maps_are_the_pairwise_and_unary_weights(mode):
    block = randomise(DisentangledNonLocal2d(8, mode=mode, temperature=0.5), seed=3).double()
    x = torch.randn(2, 8, 6, 7, dtype=torch.float64)
    points = [(2, 5), (5, 0), (0, 6)]
    rows = [r * 7 + c for r, c in points]
    state = {k: v.detach() for k, v in block.state_dict().items()}
    # The reference's pairwise weights: its output with g the identity on one-hot positions.
    theta = torch.nn.functional.conv2d(x, state["theta.weight"], state["theta.bias"]).flatten(2)
    phi = torch.nn.functional.conv2d(x, state["phi.weight"], state["phi.bias"]).flatten(2)
    theta, phi = theta - theta.mean(-1, keepdim=True), phi - phi.mean(-1, keepdim=True)
    energy = theta.transpose(1, 2) @ phi  # (B, N, N)
    if mode == "embedded_gaussian":
        pairwise = (energy / 4**0.5 / 0.5).softmax(dim=-1)
    else:
        pairwise = energy / energy.shape[-1]
    logits = torch.nn.functional.conv2d(x, state["conv_mask.weight"], state["conv_mask.bias"])
    unary = logits.flatten(1).softmax(dim=-1)  # (B, N)
    maps = {term: block.attention_map(x, points, term=term).flatten(2)
            for term in ("pairwise", "unary", "sum")}  # fmt: skip
    torch.testing.assert_close(maps["pairwise"], pairwise[:, rows])
    torch.testing.assert_close(maps["unary"], unary[:, None].expand(-1, 3, -1))
    torch.testing.assert_close(maps["sum"], pairwise[:, rows] + unary[:, None])
    if mode == "embedded_gaussian":
        torch.testing.assert_close(maps["pairwise"].sum(-1), torch.ones(2, 3, dtype=x.dtype))
    with pytest.raises(ValueError, match="unknown attention map term 'both'"):
        block.attention_map(x, points, term="both")


@pytest.mark.parametrize("norm_layer", [None, torch.nn.BatchNorm2d], ids=["conv", "norm"])
def test_timm_reinitialisation_then_zero_init_last_gives_the_plain_network(norm_layer):
    attn_layer = partial(DisentangledNonLocal2d, norm_layer=norm_layer)
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=5, block_args=dict(attn_layer=attn_layer))
    blocks = [m for m in model.modules() if isinstance(m, DisentangledNonLocal2d)]
    assert len(blocks) == 8
    # timm's init re-draws every conv (conv_out included) and zeroes each block's last BN
    # through zero_init_last(): give those BNs weights again, so the blocks see real features.
    for block in model.modules():
        if isinstance(block, timm.models.resnet.BasicBlock):
            torch.nn.init.uniform_(block.bn2.weight, 0.5, 1.5)
    plain = timm.create_model("resnet18", num_classes=5)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if ".se." not in k})
    x = torch.randn(1, 3, 32, 32)
    model.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
        # Without zero_init_last the re-drawn conv_out makes every block count.
        for block in blocks:
            torch.nn.init.normal_(block.conv_out.weight if norm_layer is None
                                  else block.conv_out.norm.weight)  # fmt: skip
        assert relative_error(model(x), plain(x)) > 1e-3


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown disentangled non-local mode 'gaussian'"):
        DisentangledNonLocal2d(16, mode="gaussian")
    for temperature in (0, -1.0, True, "0.05"):
        with pytest.raises(ValueError, match="temperature must be a positive number"):
            DisentangledNonLocal2d(16, temperature=temperature)
    with pytest.raises(ValueError, match="unknown attention backend 'naive'"):
        DisentangledNonLocal2d(16, backend="naive")
    with pytest.raises(ValueError, match=r"channels // reduction must be at least 1, got 1 // 2"):
        DisentangledNonLocal2d(1)
    assert "temperature=0.05" in repr(DisentangledNonLocal2d(16))

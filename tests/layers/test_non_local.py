"""NonLocal2d: backends, memory without the N x N matrix, concatenation gradients, checks."""

import pytest
import torch

from attnblocks import NonLocal2d
from tests.layers.mm_reference import reference_non_local, reference_pairwise
from tests.layers.test_spatial_blocks import randomise
from tests.reference import LargestTensor, relative_error

MODES = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")


def test_starts_as_identity_and_has_mmcv_parameters():
    x = torch.randn(2, 16, 5, 7)
    for mode in MODES:
        block = NonLocal2d(16, mode=mode)
        torch.testing.assert_close(block(x), x, rtol=0, atol=0)
        names = {name.split(".")[0] for name, _ in block.named_parameters()}
        expected = {"g", "conv_out"} | (set() if mode == "gaussian" else {"theta", "phi"})
        assert names == expected | ({"concat_project"} if mode == "concatenation" else set())


@pytest.mark.parametrize("mode", ["embedded_gaussian", "gaussian"])
@pytest.mark.parametrize("backend", ["bmm", "chunked", "sdpa"])
def test_softmax_modes_agree_on_every_backend(mode, backend):
    reference = randomise(NonLocal2d(16, mode=mode, backend="bmm", zero_init_last=False))
    block = NonLocal2d(16, mode=mode, backend=backend, chunk_size=7, zero_init_last=False)
    block.load_state_dict(reference.state_dict())
    x = torch.randn(2, 16, 6, 9, requires_grad=True)
    results = []
    for module in (reference, block):
        out = module(x)
        names, params = zip(*module.named_parameters())
        grads = torch.autograd.grad(out.square().sum(), (x, *params))
        results.append(dict(zip(("output", "x", *names), (out, *grads))))
    for name, expected in results[0].items():
        if name == "phi.bias":  # true gradient 0 (softmax ignores a per-query shift)
            assert results[1][name].norm() < 1e-5 * results[1]["phi.weight"].norm()
        else:
            assert relative_error(results[1][name], expected) < 1e-5, name


@pytest.mark.parametrize("sub_sample", [False, True])
def test_concatenation_gradients_match_the_n_by_n_transcription(sub_sample):
    # mmcv's own concatenation mode cannot run backward; its forward, out of place, can.
    block = randomise(NonLocal2d(8, mode="concatenation", sub_sample=sub_sample))
    x = torch.randn(2, 8, 7, 9, dtype=torch.float64, requires_grad=True)
    state = {name: p.detach().double().requires_grad_() for name, p in block.named_parameters()}
    expected = reference_non_local(x, state, "concatenation", sub_sample)
    expected_grads = torch.autograd.grad(expected.square().sum(), (x, *state.values()))
    out = torch.func.functional_call(block.double(), state, (x,))
    grads = torch.autograd.grad(out.square().sum(), (x, *state.values()))
    assert relative_error(out, expected) < 1e-12
    for ours, reference in zip(grads, expected_grads):
        assert relative_error(ours, reference) < 1e-10


@pytest.mark.parametrize("mode", MODES)
def test_training_step_without_the_n_by_n_matrix(mode):
    block = NonLocal2d(16, mode=mode, backend="chunked", chunk_size=64, zero_init_last=False)
    x = torch.randn(1, 16, 32, 32, requires_grad=True)  # N = 1024
    with LargestTensor() as probe:
        block(x).square().sum().backward()
    assert probe.largest < 1024 * 1024 // 8


@pytest.mark.parametrize("mode", MODES)
def test_attention_map_is_a_row_of_the_pairwise_matrix(mode):
    block = randomise(NonLocal2d(8, mode=mode, sub_sample=True), seed=3).double()
    x = torch.randn(1, 8, 6, 8, dtype=torch.float64)
    maps = block.attention_map(x, [(2, 5), (5, 0)])  # (1, 2, 3, 4): the pooled key grid
    pairwise = reference_pairwise(x, block.state_dict(), mode, sub_sample=True)  # (1, 48, 12)
    torch.testing.assert_close(maps.flatten(2), pairwise[:, [2 * 8 + 5, 5 * 8 + 0]])


def test_norm_layer_and_bad_arguments():
    block = NonLocal2d(16, norm_layer=torch.nn.BatchNorm2d)
    assert "conv_out.norm.running_mean" in block.state_dict()
    assert "conv_out.conv.bias" not in block.state_dict()
    torch.testing.assert_close(block(torch.randn(2, 16, 3, 3)).shape, (2, 16, 3, 3))
    with pytest.raises(ValueError, match="unknown non-local mode 'softmax'"):
        NonLocal2d(16, mode="softmax")
    with pytest.raises(ValueError, match="unknown attention backend 'naive'"):
        NonLocal2d(16, backend="naive")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        NonLocal2d(16, chunk_size=0)
    with pytest.raises(ValueError, match=r"channels // reduction must be at least 1, got 1 // 2"):
        NonLocal2d(1)

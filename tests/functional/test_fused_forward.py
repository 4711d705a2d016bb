"""The fused forward with the chunked backward (``_fused_forward.py``): exact to bmm in
float64 for every value split, within the precision contract in every dtype setting, its
log-sum-exp check refusing a kernel that disagrees, and the row normalisation that keeps a
fused kernel's log-sum-exp from leaking a false key gradient."""

import pytest
import torch

from attnblocks.functional import (
    _fused_forward,
    _sdpa,
    last_attention_backend,
    position_attention,
)
from attnblocks.functional._chunked import backward_from_log_sum_exp
from attnblocks.functional._fused_forward import chunked_backward
from tests.functional.test_precision_contract import bench
from tests.functional.test_value_split import assert_split_holds_the_contract
from tests.reference import LargestTensor, relative_error

SPLITS = [1, 2, 8, 3]  # 3 parts of 64-wide values: uneven (22 + 22 + 20, padded)
HYBRID = "_FusedForwardChunkedBackwardBackward"


def qkv(dtype=torch.float64, batch=2, query_positions=45, key_positions=38, value_dim=64):
    gen = torch.Generator().manual_seed(3)
    shapes = [(batch, query_positions, 8), (batch, key_positions, 8),
              (batch, key_positions, value_dim)]  # fmt: skip
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def output_and_grads(tensors, **options):
    out = position_attention(*tensors, **options)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    return out, torch.autograd.grad((out * weight).sum(), tensors)


@pytest.mark.parametrize("split", SPLITS)
def test_float64_equals_bmm_for_every_split(split):
    tensors = qkv()
    expected_out, expected_grads = output_and_grads(tensors, backend="bmm")
    with chunked_backward():
        out, grads = output_and_grads(tensors, backend="sdpa", value_split=split, chunk_size=16)
        assert type(out.grad_fn).__name__ == HYBRID
    assert last_attention_backend() == "sdpa" and _sdpa.last_sdpa_plan().parts == split
    assert relative_error(out, expected_out) < 1e-12
    for ours, reference in zip(grads, expected_grads):
        assert relative_error(ours, reference) < 1e-12


@pytest.mark.parametrize("setting", bench().SETTINGS)
@pytest.mark.parametrize("split", SPLITS)
def test_split_holds_the_precision_contract(monkeypatch, setting, split):
    # The low-precision value path: the kernel runs on split bfloat16/float16 q and k.
    low = setting != "float32"
    assert_split_holds_the_contract(monkeypatch, "sdpa, chunked backward", setting, split, low)


def test_without_gradients_the_fused_kernel_runs_alone():
    tensors = [tensor.detach() for tensor in qkv(torch.float32)]
    with chunked_backward():
        out = position_attention(*tensors, backend="sdpa")
    assert out.grad_fn is None and last_attention_backend() == "sdpa"
    with chunked_backward(), chunked_backward(enabled=False):  # an inner block switches it off
        out = position_attention(*qkv(torch.float32), backend="sdpa")
    assert type(out.grad_fn).__name__ != HYBRID


def test_a_kernel_whose_log_sum_exp_disagrees_is_not_used(monkeypatch):
    monkeypatch.setattr(_fused_forward, "_AGREES", {})
    real = _fused_forward._kernel_with_log_sum_exp

    def shifted(kernel, query, key, value):
        out, lse = real(kernel, query, key, value)
        return out, lse + 0.5  # e.g. another base or layout in some torch

    monkeypatch.setattr(_fused_forward, "_kernel_with_log_sum_exp", shifted)
    tensors = qkv(torch.float32)
    with chunked_backward(), pytest.warns(UserWarning) as caught:
        out, grads = output_and_grads(tensors, backend="sdpa")
    messages = [str(warning.message) for warning in caught]
    assert any("cannot serve the chunked backward" in m and "off by 0.5" in m for m in messages)
    assert any("using the 'chunked' backend instead" in m for m in messages)
    assert last_attention_backend() == "chunked"
    expected_out, expected_grads = output_and_grads(tensors, backend="bmm")
    assert relative_error(out, expected_out) < 1e-5
    for ours, reference in zip(grads, expected_grads):
        assert relative_error(ours, reference) < 1e-5


def test_a_kernel_whose_output_layout_disagrees_is_not_used(monkeypatch):
    monkeypatch.setattr(_fused_forward, "_AGREES", {})
    real = _fused_forward._kernel_with_log_sum_exp

    def parts_swapped(kernel, query, key, value):
        out, lse = real(kernel, query, key, value)
        return out.flip(1), lse  # the parts (heads) in the wrong order

    monkeypatch.setattr(_fused_forward, "_kernel_with_log_sum_exp", parts_swapped)
    with chunked_backward(), pytest.warns(UserWarning) as caught:
        position_attention(*qkv(torch.float32), backend="sdpa", value_split=2)
    messages = [str(warning.message) for warning in caught]
    assert any("cannot serve the chunked backward" in m for m in messages), messages
    assert any("using the 'chunked' backend instead" in m for m in messages), messages
    assert last_attention_backend() == "chunked"


def test_a_kernel_that_fails_on_the_real_inputs_falls_back(monkeypatch):
    monkeypatch.setattr(_fused_forward, "_AGREES", {})
    real = _fused_forward._kernel_with_log_sum_exp

    def fails_when_large(kernel, query, key, value):
        if query.shape[2] > _fused_forward.CHECK_POSITIONS:  # passes the small check only
            raise RuntimeError("cuDNN Frontend error: [cudnn_frontend] Error: stride\nmore")
        return real(kernel, query, key, value)

    monkeypatch.setattr(_fused_forward, "_kernel_with_log_sum_exp", fails_when_large)
    tensors = qkv(torch.float32)
    with chunked_backward(), pytest.warns(UserWarning) as caught:
        out, grads = output_and_grads(tensors, backend="sdpa")
    messages = [str(warning.message) for warning in caught]
    assert any("failed on" in m and "trying the next plan" in m for m in messages), messages
    assert last_attention_backend() == "chunked"
    expected_out, expected_grads = output_and_grads(tensors, backend="bmm")
    assert relative_error(out, expected_out) < 1e-5
    for ours, reference in zip(grads, expected_grads):
        assert relative_error(ours, reference) < 1e-5


@pytest.mark.parametrize("value_dtype", [torch.float32, torch.bfloat16])
def test_row_normalisation_cancels_an_offset_log_sum_exp(value_dtype):
    query, key, value = (t.detach() for t in qkv(torch.float32))
    value = value.to(value_dtype)
    scores = query @ key.transpose(1, 2)
    out = (scores.softmax(-1).to(value_dtype) @ value).float()
    exact_lse = scores.logsumexp(-1)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    saved_exact = (query, key, value, out.to(value_dtype), exact_lse)
    # An lse 1e-3 too high (per row): the recomputed rows sum to exp(-1e-3), not 1.
    offset = exact_lse + 1e-3 * torch.rand(exact_lse.shape, generator=torch.Generator())
    saved_offset = (query, key, value, out.to(value_dtype), offset)
    needs = (True, True, True)
    exact = backward_from_log_sum_exp(grad_out, saved_exact, 16, needs)
    normalised = backward_from_log_sum_exp(grad_out, saved_offset, 16, needs, normalise_rows=True)
    raw = backward_from_log_sum_exp(grad_out, saved_offset, 16, needs)
    for ours, reference in zip(normalised, exact):
        assert relative_error(ours, reference) < 1e-5
    # Without it every gradient is off by the offset's size...
    assert relative_error(raw[0], exact[0]) > 1e-4
    # ... and with a low-precision value path (softmax correction from P * dP itself) dK's
    # sum over keys, a key bias's gradient (truly 0), picks it up too.
    scale = exact[0].sum(dim=1).norm()  # the query bias gradient's size
    assert normalised[1].sum(dim=1).norm() / scale < 1e-5
    if value_dtype == torch.bfloat16:
        assert raw[1].sum(dim=1).norm() / scale > 1e-4


def test_memory_stays_within_a_chunk_of_scores():
    batch, positions, chunk = 1, 256, 32
    tensors = qkv(torch.float32, batch, positions, positions, value_dim=16)
    with chunked_backward(), LargestTensor() as probe:
        out = position_attention(*tensors, backend="sdpa", chunk_size=chunk)
        out.square().sum().backward()
    assert type(out.grad_fn).__name__ == HYBRID
    assert probe.largest <= batch * positions * chunk  # never an N x N matrix

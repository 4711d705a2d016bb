"""The position-attention backends on a CUDA GPU: same results as bmm, fused kernel, memory."""

import warnings

import pytest
import torch

from attnblocks import PAM
from attnblocks.functional import (
    last_attention_backend,
    low_precision_is_faster,
    position_attention,
    select_position_backend,
)
from tests.benchmarks import scripts
from tests.reference import relative_error

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none"
)


def qkv(batch, positions, key_dim=64, value_dim=512):
    gen = torch.Generator(device="cuda").manual_seed(positions)
    shapes = [
        (batch, positions, key_dim),
        (batch, positions, key_dim),
        (batch, positions, value_dim),
    ]
    return [torch.randn(s, generator=gen, device="cuda").requires_grad_() for s in shapes]


@pytest.mark.parametrize("backend", ["chunked", "sdpa"])
@pytest.mark.parametrize("positions", [1, 333, 2048])
def test_backend_equals_bmm_on_cuda(backend, positions):
    tensors = qkv(2, positions)
    results = {}
    for name in ("bmm", backend):
        out = position_attention(*tensors, backend=name, chunk_size=128)
        results[name] = (out, *torch.autograd.grad(out.square().sum(), tensors))
    assert last_attention_backend() == backend
    for ours, expected in zip(results[backend], results["bmm"]):
        assert relative_error(ours, expected) < 1e-4


def test_sdpa_runs_the_memory_efficient_kernel_on_cuda():
    tensors = qkv(1, 1024)
    with torch.profiler.profile() as profile:
        position_attention(*tensors, backend="sdpa").sum().backward()
    ops = {event.name for event in profile.events()}
    assert any("efficient_attention" in name or "flash_attention" in name for name in ops), ops
    assert not any("math" in name for name in ops), sorted(ops)
    assert last_attention_backend() == "sdpa"


@pytest.mark.parametrize("backend", ["bmm", "chunked", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pam_under_cuda_autocast_matches_float64(backend, dtype):
    pam = PAM(64, gamma_init=0.5, backend=backend, chunk_size=64).cuda()
    x = 60 * torch.randn(2, 64, 24, 17, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out = pam(x)
    assert torch.isfinite(out).all()
    assert relative_error(out, pam.double()(x.double())) < 1e-2


@pytest.mark.parametrize("backend", ["chunked", "sdpa"])
def test_memory_efficient_backends_stay_far_below_the_n_squared_matrix(backend):
    positions = 16384
    tensors = qkv(1, positions)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    out = position_attention(*tensors, backend=backend, chunk_size=512)
    out.sum().backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - start
    assert peak < positions * positions * 4 / 8  # an eighth of one float32 N x N matrix


@pytest.mark.parametrize("setting", ["bfloat16 autocast", "float16 autocast", "bfloat16 module"])
@pytest.mark.parametrize("backend", ["chunked", "sdpa", "sdpa inference", "auto"])
def test_precision_contract_on_cuda(setting, backend):
    # Whatever this card measures, both value paths are held to 1.5x bmm's error.
    bench = scripts.load("bench_precision")
    options = {"channels": 128, "seeds": (0, 1, 2), "device": "cuda"}
    reference = bench.measure(setting, "bmm", False, **options)
    for low_is_fast in (True, False):
        errors = bench.measure(setting, backend, low_is_fast, **options)
        for name, error in errors.items():
            if error != error:  # NaN: not computed (inference)
                continue
            bound = max(1.5 * reference[name], bench.NOISE_FLOOR)
            assert error <= bound, f"{name} ({low_is_fast=}): {error:.2e} > {bound:.2e}"


def test_auto_on_cuda_trains_low_precision_with_chunked_and_infers_with_sdpa():
    tensors = qkv(1, 8192)
    faster = low_precision_is_faster("cuda", torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        training = select_position_backend(*tensors[:2], value=tensors[2])
        with torch.no_grad():
            inference = select_position_backend(*tensors[:2], value=tensors[2])
    assert training == ("chunked" if faster else "sdpa")
    assert inference == "sdpa"


def test_sdpa_inference_feeds_the_fused_kernel_split_bfloat16_queries_and_keys():
    query, key, value = (t.detach() for t in qkv(1, 2048))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to chunked
        out = position_attention(query, key, value, backend="sdpa")
    assert last_attention_backend() == "sdpa"
    expected = position_attention(query.double(), key.double(), value.double(), backend="bmm")
    assert relative_error(out, expected) < 1e-2

"""The position-attention backends on a CUDA GPU: same results as bmm, fused kernel, memory."""

import pytest
import torch

from attnblocks import PAM
from attnblocks.functional import last_attention_backend, position_attention
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

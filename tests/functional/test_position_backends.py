"""Every position-attention backend against bmm; memory, precision, kernel and selection checks."""

import warnings

import pytest
import torch

from attnblocks import PAM
from attnblocks.functional import (
    BACKEND_ENV_VAR,
    _sdpa,
    attention_backend,
    chunk_size_for_memory,
    get_attention_backend,
    last_attention_backend,
    position,
    position_attention,
    select_position_backend,
    set_attention_backend,
)
from tests.functional.test_position import float64_attention
from tests.reference import LargestTensor, relative_error

MEMORY_EFFICIENT = ["chunked", "sdpa"]


def qkv(batch, query_positions, key_positions, key_dim=8, value_dim=16, dtype=torch.float32):
    gen = torch.Generator().manual_seed(query_positions * 100 + key_positions)
    query = torch.randn(batch, query_positions, key_dim, generator=gen, dtype=dtype)
    key = torch.randn(batch, key_positions, key_dim, generator=gen, dtype=dtype)
    value = torch.randn(batch, key_positions, value_dim, generator=gen, dtype=dtype)
    return [t.requires_grad_() for t in (query, key, value)]


def output_and_grads(backend, tensors, chunk_size=None):
    out = position_attention(*tensors, backend=backend, chunk_size=chunk_size)
    weight = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    grads = torch.autograd.grad((out * weight).sum(), tensors)
    return out, grads


@pytest.mark.parametrize("backend", MEMORY_EFFICIENT)
@pytest.mark.parametrize(
    "batch, query_positions, key_positions, chunk_size",
    [
        (1, 1, 1, 4),  # a 1x1 map
        (2, 37, 37, 8),  # N not divisible by the chunk
        (3, 5, 5, 16),  # N smaller than the chunk
        (2, 64, 64, 16),  # N divisible by the chunk
        (1, 10, 23, 3),  # as many queries as keys is not required
        (2, 50, 50, None),  # chunk from the memory budget
    ],
)
def test_backend_equals_bmm_with_gradients(
    backend, batch, query_positions, key_positions, chunk_size
):
    tensors = qkv(batch, query_positions, key_positions)
    expected_out, expected_grads = output_and_grads("bmm", tensors)
    out, grads = output_and_grads(backend, tensors, chunk_size)
    assert last_attention_backend() == backend
    assert relative_error(out, expected_out) < 1e-5
    for name, grad, expected in zip("qkv", grads, expected_grads):
        assert relative_error(grad, expected) < 1e-5, name


@pytest.mark.parametrize("backend, chunk_size", [("chunked", 2), ("chunked", 4), ("sdpa", None)])
def test_gradcheck_float64(backend, chunk_size):
    tensors = qkv(2, 7, 7, key_dim=3, value_dim=5, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda q, k, v: position_attention(q, k, v, backend=backend, chunk_size=chunk_size),
        tensors,
    )


@pytest.mark.parametrize("needs_grad", ["q", "k", "v", "qk"])
def test_chunked_computes_only_the_gradients_asked_for(needs_grad):
    tensors = qkv(2, 9, 9)
    for name, tensor in zip("qkv", tensors):
        tensor.requires_grad_(name in needs_grad)
    wanted = [tensor for tensor in tensors if tensor.requires_grad]
    weight = torch.linspace(-1, 1, 2 * 9 * 16).reshape(2, 9, 16)
    grads = {}
    for backend in ("bmm", "chunked"):
        out = position_attention(*tensors, backend=backend, chunk_size=4)
        grads[backend] = torch.autograd.grad((out * weight).sum(), wanted)
    for grad, expected in zip(grads["chunked"], grads["bmm"]):
        assert relative_error(grad, expected) < 1e-5


@pytest.mark.parametrize("backend, chunk_size", [("bmm", None), ("chunked", 32), ("sdpa", None)])
def test_no_tensor_larger_than_a_chunk_of_scores(backend, chunk_size):
    channels, side = 16, 16  # N = 256 positions; every (1, C, H, W) map has C * N = 4096 elements
    positions = side * side
    pam = PAM(channels, reduction=2, backend=backend, chunk_size=chunk_size, gamma_init=0.5)
    x = torch.randn(1, channels, side, side, requires_grad=True)
    with LargestTensor() as probe:
        pam(x).square().sum().backward()
    if backend == "bmm":
        assert probe.largest == positions * positions  # the probe sees the N x N matrix
    else:
        limit = positions * (chunk_size or channels)
        assert probe.largest <= limit, f"{probe.largest} elements > N * chunk = {limit}"


@pytest.mark.parametrize("backend", ["bmm", "chunked", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_autocast_with_large_energies(backend, dtype):
    tensors = [60 * t.detach() for t in qkv(2, 40, 40, key_dim=64)]
    tensors[2] = tensors[2] / 60
    with torch.autocast("cpu", dtype=dtype):
        out = position_attention(*tensors, backend=backend, chunk_size=16)
    assert torch.isfinite(out).all()
    assert relative_error(out, float64_attention(*tensors)) < 1e-2


@pytest.mark.parametrize("backend", ["bmm", "chunked", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pam_under_cpu_autocast_matches_float64(backend, dtype):
    pam = PAM(64, gamma_init=0.5, backend=backend, chunk_size=16)
    x = 60 * torch.randn(2, 64, 6, 7, generator=torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=dtype):
        out = pam(x)
    expected = pam.double()(x.double())
    assert torch.isfinite(out).all()
    assert relative_error(out, expected) < 1e-2


def test_sdpa_on_cpu_runs_the_fused_flash_kernel_not_math():
    tensors = qkv(1, 30, 30)
    with torch.profiler.profile() as profile:
        position_attention(*tensors, backend="sdpa").sum().backward()
    ops = {event.name for event in profile.events()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in ops
    assert not any("math" in name for name in ops), sorted(ops)
    assert last_attention_backend() == "sdpa"


@pytest.mark.parametrize("table_says", ["no", "yes"])
def test_sdpa_falls_back_to_chunked_when_no_fused_kernel_fits(monkeypatch, table_says):
    # Offer only the CUDA memory-efficient kernel on CPU: the kernel table turns it down, or
    # (when the table is made to accept it) torch itself answers "No available kernel".
    monkeypatch.setitem(_sdpa.KERNELS_BY_DEVICE, "cpu", ("efficient",))
    monkeypatch.setattr(_sdpa, "_PLANS", {})
    if table_says == "yes":
        monkeypatch.setattr(_sdpa, "kernel_accepts", lambda *args: True)
    tensors = qkv(2, 20, 20)
    with pytest.warns(UserWarning, match="using the 'chunked' backend instead"):
        out = position_attention(*tensors, backend="sdpa")
    assert last_attention_backend() == "chunked"
    assert relative_error(out, position_attention(*tensors, backend="bmm")) < 1e-5


def test_auto_uses_bmm_for_small_maps_and_chunked_for_large_ones_on_cpu(monkeypatch):
    query, key, value = qkv(1, 64, 64)
    assert select_position_backend(query, key) == "bmm"
    position_attention(query, key, value)
    assert last_attention_backend() == "bmm"
    # 64 x 64 float32 scores are 16 KiB: above a lowered threshold, or short of memory -> chunked.
    monkeypatch.setattr(position, "_AUTOMATIC_CHOICES", {})
    monkeypatch.setattr(position, "BMM_MAX_MATRIX_BYTES", 8 * 1024)
    assert select_position_backend(query, key) == "chunked"
    monkeypatch.undo()
    monkeypatch.setattr(position, "_AUTOMATIC_CHOICES", {})
    monkeypatch.setattr(position, "_free_memory", lambda device: 32 * 1024)
    assert select_position_backend(query, key) == "chunked"
    # Decided once per shape: memory coming back does not flip the choice mid-run.
    monkeypatch.setattr(position, "_free_memory", lambda device: 2**40)
    assert select_position_backend(query, key) == "chunked"


def test_scoped_override_stays_in_its_thread():
    import threading

    seen = {}
    with attention_backend("chunked"):
        worker = threading.Thread(target=lambda: seen.update(inner=get_attention_backend()))
        worker.start()
        worker.join()
        assert get_attention_backend() == "chunked"
    assert seen["inner"] is None  # the block's setting did not leak into another thread


def test_global_override_and_environment_variable(monkeypatch):
    query, key, _ = qkv(1, 8, 8)
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    assert get_attention_backend() is None
    with attention_backend("chunked"):
        assert select_position_backend(query, key) == "chunked"
        assert select_position_backend(query, key, "bmm") == "bmm"  # an explicit choice wins
    assert get_attention_backend() is None  # restored
    monkeypatch.setenv(BACKEND_ENV_VAR, "sdpa")
    assert select_position_backend(query, key) == "sdpa"
    set_attention_backend("chunked")  # the function beats the environment
    try:
        assert select_position_backend(query, key) == "chunked"
    finally:
        set_attention_backend(None)
    monkeypatch.setenv(BACKEND_ENV_VAR, "fast")
    with pytest.raises(ValueError, match="ATTNBLOCKS_BACKEND='fast' is not an attention backend"):
        select_position_backend(query, key)
    with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
        set_attention_backend("fast")


def test_chunk_size_from_memory_budget():
    chunk = chunk_size_for_memory(2, 1000, torch.float32, memory_bytes=2**20)
    assert chunk == 2**20 // (2 * 2 * 1000 * 4)
    assert chunk_size_for_memory(1, 10**7, torch.float32, memory_bytes=2**20) == 16  # the floor


def test_no_warning_for_regular_calls():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for backend in ("bmm", "chunked", "sdpa", "auto"):
            position_attention(*qkv(1, 12, 12), backend=backend)


def test_auto_applies_its_matrix_limit_per_image_not_per_batch(monkeypatch):
    # One 2048 x 2048 float32 matrix is 16 MiB (<= 64 MiB); eight images' are 128 MiB.
    monkeypatch.setattr(position, "_AUTOMATIC_CHOICES", {})
    monkeypatch.setattr(position, "_free_memory", lambda device: 2**34)
    query = torch.zeros(8, 2048, 4)
    assert select_position_backend(query, query) == "bmm"
    # The batch's matrices must still fit in free memory (4x for forward and backward).
    monkeypatch.setattr(position, "_AUTOMATIC_CHOICES", {})
    monkeypatch.setattr(position, "_free_memory", lambda device: 256 * 2**20)
    assert select_position_backend(query, query) == "chunked"


def write_files(root, files):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.mark.parametrize(
    ("files", "headroom"),
    [
        # cgroup v2: 1 GiB limit, 700 MiB used of which 100 MiB reclaimable cache
        ({"memory.max": "1073741824\n", "memory.current": str(700 * 2**20),
          "memory.stat": f"anon 1\ninactive_file {100 * 2**20}\n"}, 424 * 2**20),
        ({"memory.max": "max\n", "memory.current": "5"}, None),  # v2 without a limit
        # cgroup v1, as Docker's --memory=2g writes it
        ({"memory/memory.limit_in_bytes": str(2 * 2**30), "memory/memory.usage_in_bytes":
          str(2**30), "memory/memory.stat": "cache 9\ntotal_inactive_file 0\n"}, 2**30),
        ({"memory/memory.limit_in_bytes": "9223372036854771712",
          "memory/memory.usage_in_bytes": "7"}, None),  # v1's "no limit"
        ({}, None),  # no cgroup files at all
    ],
    ids=["v2", "v2-unlimited", "v1", "v1-unlimited", "none"],
)  # fmt: skip
def test_a_containers_memory_limit_caps_free_memory(tmp_path, monkeypatch, files, headroom):
    write_files(tmp_path, files)
    monkeypatch.setattr(position, "CGROUP_ROOT", str(tmp_path))
    assert position._cgroup_headroom() == headroom
    monkeypatch.setattr(position, "_system_free_memory", lambda: 2**40)  # a big host
    expected = 2**40 if headroom is None else headroom
    assert position._free_memory(torch.device("cpu")) == expected

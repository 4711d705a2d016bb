"""The precision contract: every backend within 1.5x of bmm's error against float64, in
every dtype setting and on both value paths; which dtypes the matmuls really run in."""

import functools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attnblocks import PAM
from attnblocks.functional import _precision, position, position_attention
from attnblocks.functional._precision import low_precision_is_faster, value_path_dtype
from tests.benchmarks import scripts
from tests.functional.test_position import float64_attention
from tests.reference import LargestTensor, relative_error

SHIPPED = [variant for variant in scripts.load("bench_precision").VARIANTS if variant[0] != "bmm"]
SHIPPED = [variant for variant in SHIPPED if "rejected" not in variant[0]]


def bench():
    return scripts.load("bench_precision")


@functools.cache
def bmm_errors(setting):
    return bench().measure(setting, "bmm", low_is_fast=False, seeds=(0, 1, 2, 3))


@pytest.fixture
def low_precision_is(monkeypatch):
    """Preset whether this device's low-precision matmul counts as faster than float32."""

    def preset(faster: bool) -> None:
        measured = {(device, dtype): faster for device in ("cpu", "cuda")
                    for dtype in _precision.LOW_PRECISION_DTYPES}  # fmt: skip
        monkeypatch.setattr(_precision, "_LOW_PRECISION_IS_FASTER", measured)
        monkeypatch.setattr(position, "_AUTOMATIC_CHOICES", {})

    return preset


@pytest.mark.parametrize("setting", bench().SETTINGS)
@pytest.mark.parametrize("backend, path", [*SHIPPED, ("auto", "low"), ("auto", "float32")])
def test_backend_error_within_one_and_a_half_times_bmm(setting, backend, path):
    if setting == "float32" and path == "low":
        pytest.skip("float32 has no low-precision value path")
    reference = bmm_errors(setting)
    errors = bench().measure(setting, backend, path == "low", seeds=(0, 1, 2, 3))
    for name, error in errors.items():
        if name not in reference or error != error:  # NaN: not computed in inference
            continue
        bound = max(1.5 * reference[name], bench().NOISE_FLOOR)
        assert error <= bound, f"{name}: {error:.2e} > 1.5 x bmm's {reference[name]:.2e}"


class MatmulDtypes(TorchDispatchMode):
    """Records the operand dtypes of every bmm/baddbmm and SDPA call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0].rstrip("_")  # baddbmm_ (in place) as baddbmm
        if name in ("bmm", "baddbmm", "_scaled_dot_product_flash_attention_for_cpu"):
            operands = [a for a in args if isinstance(a, torch.Tensor)]
            self.calls.append((name, tuple(str(t.dtype).split(".")[-1] for t in operands)))
        return func(*args, **(kwargs or {}))


def pam_step(backend, x, grad=True, dtype=torch.bfloat16):
    pam = PAM(32, backend=backend, chunk_size=16, gamma_init=0.5)
    x = x.clone().requires_grad_(grad)
    with MatmulDtypes() as record:
        with torch.autocast("cpu", dtype=dtype), torch.set_grad_enabled(grad):
            out = pam(x)
        if grad:
            out.float().square().sum().backward()
    return record.calls


def test_chunked_value_path_runs_in_the_autocast_dtype_where_that_is_faster(low_precision_is):
    low_precision_is(True)
    calls = pam_step("chunked", torch.randn(2, 32, 6, 7))
    # Energies (q k^T), dQ = dS K and dK += dS^T Q in float32; P V, P^T dO, dO V^T in bfloat16.
    low = [c for c in calls if c[1][-2:] == ("bfloat16", "bfloat16")]
    full = [c for c in calls if set(c[1]) == {"float32"}]
    chunks = 3  # 42 positions in chunks of 16
    assert len(low) == 3 * chunks, calls  # forward P V; backward P^T dO and dO V^T
    assert len(full) == 4 * chunks, calls  # q k^T twice (forward, recomputed), dQ, dK
    assert len(calls) == len(low) + len(full)


def test_chunked_value_path_runs_in_float32_where_low_precision_is_slower(low_precision_is):
    low_precision_is(False)
    calls = pam_step("chunked", torch.randn(2, 32, 6, 7))
    assert calls and all(set(dtypes) == {"float32"} for _, dtypes in calls), calls


@pytest.mark.parametrize("grad, kernel_dtype", [(False, "bfloat16"), (True, "float32")])
def test_sdpa_splits_queries_and_keys_for_inference_only(low_precision_is, grad, kernel_dtype):
    low_precision_is(True)
    calls = pam_step("sdpa", torch.randn(2, 32, 6, 7), grad=grad)
    kernels = [dtypes for name, dtypes in calls if name.startswith("_scaled_dot_product")]
    assert kernels and all(set(dtypes) == {kernel_dtype} for dtypes in kernels), calls


def test_split_queries_and_keys_keep_the_energies_near_float32():
    from attnblocks.functional._sdpa import split_query_key

    gen = torch.Generator().manual_seed(0)
    query, key = (
        30 * torch.randn(2, 50, 8, generator=gen),
        30 * torch.randn(2, 60, 8, generator=gen),
    )
    exact = query.double() @ key.double().transpose(1, 2)
    query_split, key_split = split_query_key(query, key, torch.bfloat16)
    assert query_split.shape == (2, 50, 24) and query_split.dtype == torch.bfloat16
    split = query_split.double() @ key_split.double().transpose(1, 2)
    rounded = query.bfloat16().double() @ key.bfloat16().double().transpose(1, 2)
    assert relative_error(split, exact) < 1e-4  # ~2^-16: the q_lo . k_lo term is all it drops
    assert relative_error(rounded, exact) > 1e-3  # plain bfloat16 queries/keys: ~2^-8


@pytest.mark.parametrize("faster", [True, False])
@pytest.mark.parametrize("backend", ["bmm", "chunked", "sdpa", "auto"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_with_activations_sixty_times_unit_scale_is_finite(
    low_precision_is, faster, backend, dtype
):
    low_precision_is(faster)
    pam = PAM(64, gamma_init=0.5, backend=backend, chunk_size=16)
    x = 60 * torch.randn(2, 64, 6, 7, generator=torch.Generator().manual_seed(5))
    x.requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        out = pam(x)
    out.float().square().mean().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in pam.parameters())
    assert relative_error(out, pam.double()(x.double())) < 1e-2


def test_mixed_chunked_keeps_memory_to_a_chunk_of_scores(low_precision_is):
    low_precision_is(True)
    channels, side, chunk = 16, 16, 32  # N = 256; a (1, C, H, W) map has C * N = 4096 elements
    pam = PAM(channels, reduction=2, backend="chunked", chunk_size=chunk, gamma_init=0.5)
    x = torch.randn(1, channels, side, side, requires_grad=True)
    with LargestTensor() as probe, torch.autocast("cpu", dtype=torch.bfloat16):
        pam(x).float().square().sum().backward()
    assert probe.largest <= side * side * chunk


def test_mixed_chunked_equals_bmm_under_autocast_with_gradients(low_precision_is):
    low_precision_is(True)
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.randn(2, 45, d, generator=gen).requires_grad_() for d in (8, 8, 16)]
    results = {}
    for backend in ("bmm", "chunked"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = position_attention(*tensors, backend=backend, chunk_size=16)
        assert out.dtype == torch.float32  # the value's dtype, as bmm returns it
        weight = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        results[backend] = (out, *torch.autograd.grad((out * weight).sum(), tensors))
    for ours, reference in zip(results["chunked"], results["bmm"]):
        # Same rounding steps as bmm under autocast: equal up to float32 noise and the
        # order of the bfloat16 sums (bmm rounds P V once, chunked once per chunk row).
        assert relative_error(ours, reference) < 3e-3
    assert relative_error(results["chunked"][0], float64_attention(*tensors)) < 1e-2


def test_low_precision_speed_is_measured_once_per_device_and_dtype(monkeypatch):
    timings = {torch.bfloat16: (1.0, 0.3), torch.float16: (1.0, 40.0)}
    calls = []

    def fake_matmul_seconds(device, dtype):
        calls.append((device.type, dtype))
        return timings[dtype]

    monkeypatch.setattr(_precision, "_LOW_PRECISION_IS_FASTER", {})
    monkeypatch.setattr(_precision, "_matmul_seconds", fake_matmul_seconds)
    assert low_precision_is_faster("cpu", torch.bfloat16) is True
    assert low_precision_is_faster("cpu", torch.float16) is False
    assert low_precision_is_faster(torch.device("cpu"), torch.bfloat16) is True
    assert calls == [("cpu", torch.bfloat16), ("cpu", torch.float16)]  # cached after that


def test_real_measurement_restores_the_thread_count():
    threads = torch.get_num_threads()
    seconds = _precision._matmul_seconds(torch.device("cpu"), torch.bfloat16)
    assert all(0 < value < 1 for value in seconds)
    low_precision_is_faster("cpu", torch.bfloat16)
    assert torch.get_num_threads() == threads


def test_value_path_dtype_follows_autocast_half_inputs_and_speed(low_precision_is):
    low_precision_is(True)
    value = torch.randn(1, 4, 8)
    assert value_path_dtype(value, torch.float32) == torch.float32  # no low precision asked
    assert value_path_dtype(value.half(), torch.float32) == torch.float16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert value_path_dtype(value, torch.float32) == torch.bfloat16
        assert value_path_dtype(value, torch.float64) == torch.float64  # float64 stays exact
    low_precision_is(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert value_path_dtype(value, torch.float32) == torch.float32


def test_auto_prefers_chunked_at_every_size_where_low_precision_is_slow(low_precision_is):
    gen = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 64, d, generator=gen) for d in (8, 8, 16))
    low_precision_is(False)
    assert position.select_position_backend(query, key, value=value) == "bmm"  # float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert position.select_position_backend(query, key, value=value) == "chunked"
    assert position.select_position_backend(query, key, value=value.half()) == "chunked"
    low_precision_is(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert position.select_position_backend(query, key, value=value) == "bmm"


@pytest.mark.parametrize("chunk_size", [None, 40])  # both above the 16 keys
def test_mixed_chunked_with_more_queries_than_keys(low_precision_is, chunk_size):
    # Its rounded-probability buffer has a row per query (a non-local block sub-samples keys).
    low_precision_is(True)
    gen = torch.Generator().manual_seed(2)
    tensors = [torch.randn(2, n, d, generator=gen).requires_grad_()
               for n, d in ((64, 8), (16, 8), (16, 12))]  # fmt: skip
    results = {}
    for backend in ("bmm", "chunked"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = position_attention(*tensors, backend=backend, chunk_size=chunk_size)
        results[backend] = (out, *torch.autograd.grad(out.float().square().sum(), tensors))
    for ours, reference in zip(results["chunked"], results["bmm"]):
        assert relative_error(ours, reference) < 3e-3


def test_autocast_leaves_float64_exact(low_precision_is):
    low_precision_is(False)  # bmm would win for float64 but chunked for bfloat16 on this rule
    gen = torch.Generator().manual_seed(4)
    query, key = (torch.randn(1, 30, 8, generator=gen) for _ in range(2))
    value = torch.randn(1, 30, 16, generator=gen, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _precision.low_precision_dtype(value) is None  # autocast never casts float64
        assert position.select_position_backend(query.double(), key.double(), value=value) == "bmm"
        low_precision_is(True)
        for backend in ("chunked", "sdpa"):
            out = position_attention(query, key, value, backend=backend, chunk_size=7)
            assert relative_error(out, float64_attention(query, key, value)) < 1e-5, backend


def test_the_measurement_leaves_the_global_random_stream_alone(monkeypatch):
    monkeypatch.setattr(_precision, "_LOW_PRECISION_IS_FASTER", {})
    torch.manual_seed(0)
    low_precision_is_faster("cpu", torch.bfloat16)  # measured here, with its own generator
    after_measuring = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after_measuring)


def test_threads_asking_at_once_share_one_measurement_and_keep_their_thread_count(monkeypatch):
    import threading
    import time

    calls = []

    def slow_matmul_seconds(device, dtype):
        calls.append(dtype)
        time.sleep(0.05)  # long enough for the other thread to arrive meanwhile
        return 1.0, 0.5

    monkeypatch.setattr(_precision, "_LOW_PRECISION_IS_FASTER", {})
    monkeypatch.setattr(_precision, "_matmul_seconds", slow_matmul_seconds)
    threads = torch.get_num_threads()
    barrier, verdicts = threading.Barrier(2), []

    def ask():
        barrier.wait()
        verdicts.append(low_precision_is_faster("cpu", torch.bfloat16))

    workers = [threading.Thread(target=ask) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert verdicts == [True, True] and calls == [torch.bfloat16]
    counted = []
    fresh = threading.Thread(target=lambda: counted.append(torch.get_num_threads()))
    fresh.start()
    fresh.join()
    assert counted == [threads] and torch.get_num_threads() == threads


def test_fake_tensors_are_set_aside_to_measure_on_real_ones(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    kinds = []

    def timed(device, dtype):
        kinds.append(type(torch.randn(2)))  # what a tensor made while measuring is
        return 1.0, 10.0  # float16 ten times slower

    monkeypatch.setattr(_precision, "_LOW_PRECISION_IS_FASTER", {})
    monkeypatch.setattr(_precision, "_matmul_seconds", timed)
    with FakeTensorMode():
        assert low_precision_is_faster("cpu", torch.float16) is False
    assert kinds == [torch.Tensor] and FakeTensor not in kinds
    assert {("cpu", torch.float16): False} == _precision._LOW_PRECISION_IS_FASTER


def test_compiled_and_eager_code_take_the_same_value_path(monkeypatch):
    # Where low precision is slow, eager runs the value path in float32; a graph compiled
    # before anything was measured must not assume the opposite (a second answer in one
    # process): torch.compile measures too, on real tensors, and bakes the answer in.
    monkeypatch.setattr(_precision, "_LOW_PRECISION_IS_FASTER", {})
    monkeypatch.setattr(_precision, "_matmul_seconds", lambda device, dtype: (1.0, 10.0))
    gen = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 64, d, generator=gen) for d in (8, 8, 16))

    def attend(query, key, value):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return position_attention(query, key, value, backend="chunked", chunk_size=16)

    torch._dynamo.reset()
    compiled = torch.compile(attend, backend="eager", fullgraph=True)(query, key, value)
    eager = attend(query, key, value)
    assert compiled.dtype == eager.dtype
    assert torch.equal(compiled, eager)  # the same float32 value path, the same numbers
    assert {("cpu", torch.bfloat16): False} == _precision._LOW_PRECISION_IS_FASTER
    _precision._LOW_PRECISION_IS_FASTER[("cpu", torch.bfloat16)] = True  # bfloat16 path
    assert relative_error(attend(query, key, value), eager) > 1e-4  # which would differ
    torch._dynamo.reset()

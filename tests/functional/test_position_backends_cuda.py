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
@pytest.mark.parametrize(
    "backend", ["chunked", "sdpa", "sdpa inference", "sdpa, chunked backward", "auto"]
)
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


def test_auto_on_cuda_trains_low_precision_with_chunked_and_infers_with_sdpa(monkeypatch):
    from attnblocks.functional import _autotune, position

    monkeypatch.setattr(_autotune, "PROBED_DEVICE_TYPES", ())  # the written rule
    monkeypatch.setattr(position, "_AUTOMATIC_CHOICES", {})
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


# The value split on the GPU's fused kernels (see attnblocks/functional/_sdpa.py).


@pytest.mark.parametrize("kernel", ["cudnn", "flash", "efficient"])
@pytest.mark.parametrize("split", [None, 1, 2, 4, 8])
@pytest.mark.parametrize("setting", ["float32 training", "bfloat16 inference"])
def test_every_plan_torch_runs_equals_bmm(kernel, split, setting):
    from attnblocks.functional import _sdpa

    query, key, value = qkv(2, 1000)
    training = setting.endswith("training")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=not training)
    with autocast, torch.set_grad_enabled(training), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a plan no kernel takes falls back: skipped below
        out = _attend_with(kernel, query, key, value, split)
        ran, plan = last_attention_backend(), _sdpa.last_sdpa_plan()
    if ran != "sdpa" or plan.kernel != kernel or (split and plan.parts != split):
        pytest.skip(f"torch runs no {kernel} plan with split {split} for {setting} here")
    expected = position_attention(query.double(), key.double(), value.double(), backend="bmm")
    results = [out]
    if training:
        results += torch.autograd.grad(out.square().sum(), [query, key, value])
        expected_out = expected
        expected = [expected_out, *torch.autograd.grad(expected_out.square().sum(),
                                                       [query, key, value])]  # fmt: skip
    else:
        expected = [expected]
    bound = 1e-4 if training else 1e-2  # bfloat16 values in inference
    for ours, reference in zip(results, expected):
        assert relative_error(ours, reference) < bound


def _attend_with(kernel, query, key, value, split):
    """position_attention on sdpa with only ``kernel`` allowed."""
    from attnblocks.functional import _sdpa

    saved = _sdpa.KERNELS_BY_DEVICE["cuda"]
    _sdpa.KERNELS_BY_DEVICE["cuda"] = (kernel,)
    _sdpa._PLANS.clear()
    try:
        return position_attention(query, key, value, backend="sdpa", value_split=split)
    finally:
        _sdpa.KERNELS_BY_DEVICE["cuda"] = saved
        _sdpa._PLANS.clear()


@pytest.mark.parametrize("kernel", ["cudnn", "flash", "efficient"])
@pytest.mark.parametrize("split", [None, 1, 2])
@pytest.mark.parametrize("setting", ["float32", "bfloat16 autocast"])
def test_fused_forward_with_chunked_backward_equals_bmm(kernel, split, setting):
    # Each kernel's forward (torch's operator that returns the log-sum-exp) with the chunked
    # backward: the log-sum-exp must be the natural one of these rows, or gradients are wrong.
    from attnblocks.functional import _sdpa
    from attnblocks.functional._fused_forward import chunked_backward

    query, key, value = qkv(2, 1000)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=setting != "float32")
    with autocast, chunked_backward(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _attend_with(kernel, query, key, value, split)
        ran, plan = last_attention_backend(), _sdpa.last_sdpa_plan()
    refused = [str(w.message) for w in caught if "cannot serve" in str(w.message)]
    assert not refused, refused  # torch ran the kernel but its log-sum-exp disagreed
    if ran != "sdpa" or plan.kernel != kernel or (split and plan.parts != split):
        pytest.skip(f"torch runs no {kernel} plan with split {split} for {setting} here")
    assert type(out.grad_fn).__name__ == "_FusedForwardChunkedBackwardBackward"
    grads = torch.autograd.grad(out.float().square().sum(), [query, key, value])
    doubles = [t.detach().double().requires_grad_() for t in (query, key, value)]
    expected = position_attention(*doubles, backend="bmm")
    expected_grads = torch.autograd.grad(expected.square().sum(), doubles)
    bound = 1e-4 if setting == "float32" else 2e-2  # bfloat16 values and value path
    for ours, reference in zip([out, *grads], [expected, *expected_grads]):
        assert relative_error(ours, reference) < bound


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grad", [False, True])
def test_kernel_table_agrees_with_torchs_report_for_this_card(dtype, grad):
    # The table is a transcription of torch's sdp_utils; on a live card torch's own report
    # (can_use_*_attention) decides. Disagreements mean the transcription is out of date.
    from attnblocks.functional import _sdpa

    spec = _sdpa.device_spec(torch.device("cuda"))
    widths = [(64, 64), (64, 128), (64, 256), (64, 512), (128, 128), (192, 128), (192, 192),
              (192, 256), (200, 200), (256, 256), (8, 16), (6, 13)]  # fmt: skip
    checks = {"flash": torch.backends.cuda.can_use_flash_attention,
              "efficient": torch.backends.cuda.can_use_efficient_attention,
              "cudnn": torch.backends.cuda.can_use_cudnn_attention}  # fmt: skip
    disagreements = []
    for qk, v in widths:
        q = torch.randn(1, 2, 256, qk, device="cuda", dtype=dtype, requires_grad=grad)
        k = torch.randn(1, 2, 256, qk, device="cuda", dtype=dtype, requires_grad=grad)
        vv = torch.randn(1, 2, 256, v, device="cuda", dtype=dtype, requires_grad=grad)
        params = torch.backends.cuda.SDPAParams(q, k, vv, None, 0.0, False, False)
        for kernel, ask in checks.items():
            table = _sdpa.kernel_accepts(kernel, spec, dtype, qk, v, grad, key_positions=256)
            if table != bool(ask(params)):
                disagreements.append((kernel, qk, v, f"table {table}, torch {not table}"))
    assert not disagreements, f"{spec}: {disagreements}"


def test_split_kernels_take_expanded_queries_and_keys_without_copies():
    # Flash and memory-efficient kernels get q/k as stride-0 views over the heads; cuDNN
    # gets copies (torch <= 2.11 derives a layout from a stride-0 q that cuDNN rejects).
    from torch.utils._python_dispatch import TorchDispatchMode

    from attnblocks.functional import _sdpa

    class QueryStrides(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.strides = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "scaled_dot_product" in func.__name__ and "backward" not in func.__name__:
                self.strides.append(args[0].stride())
            return func(*args, **(kwargs or {}))

    query, key, value = (t.detach() for t in qkv(1, 2048))
    ran = {}
    for kernel in ("cudnn", "flash", "efficient"):
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)
        with torch.no_grad(), autocast, warnings.catch_warnings(), QueryStrides() as record:
            warnings.simplefilter("ignore")
            _attend_with(kernel, query, key, value, 2)
        plan = _sdpa.last_sdpa_plan()
        if last_attention_backend() == "sdpa" and plan.kernel == kernel:
            ran[kernel] = record.strides[-1]
    assert ran, "no fused kernel took a 2-part split on this card"
    assert all((strides[1] == 0) == (kernel != "cudnn") for kernel, strides in ran.items()), ran


def test_auto_on_cuda_measures_once_and_runs_the_fastest():
    from attnblocks.functional import _autotune, position

    _autotune.clear()
    position._AUTOMATIC_CHOICES.clear()
    tensors = qkv(1, 8192)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        choice = select_position_backend(*tensors[:2], value=tensors[2])
    timings = list(_autotune.probe_timings().values())
    assert len(timings) == 1, timings
    measured = {label: seconds for label, seconds in timings[0].items() if seconds < float("inf")}
    fastest = min(measured.values())
    winners = {label.split("[")[0] for label, s in measured.items() if s <= 1.02 * fastest}
    assert choice in winners, timings

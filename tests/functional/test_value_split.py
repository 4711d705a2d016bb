"""The sdpa backend's value split: exact to bmm (outputs and every gradient, within the
precision contract), the kernel that really runs on CPU, and the dispatch's kernel table
for CUDA devices, checked without a GPU by faking the capability query."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attnblocks import PAM
from attnblocks.functional import _precision, _sdpa, last_attention_backend, position_attention
from attnblocks.functional._sdpa import DeviceSpec, KernelPlan, candidate_plans, kernel_accepts
from tests.functional.test_position import float64_attention
from tests.functional.test_precision_contract import bench, bmm_errors
from tests.reference import relative_error

SPLITS = [1, 2, 8, 3]  # 3 parts of PAM(64)'s 64-wide values: uneven (22 + 22 + 20, padded)
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


# Training in every setting and split; inference (split bfloat16/float16 queries and keys
# in the kernel) in the low-precision settings, with splits 8 and 3 (float32 inference runs
# training's kernel call).
CONTRACT_CASES = [("sdpa", setting, split) for setting in bench().SETTINGS for split in SPLITS]
CONTRACT_CASES += [("sdpa inference", setting, split) for setting in bench().SETTINGS[1:]
                   for split in (8, 3)]  # fmt: skip


def assert_split_holds_the_contract(monkeypatch, variant, setting, split, low_is_fast):
    """``bench_precision``'s ``variant`` with the value split into ``split`` parts: the sdpa
    backend ran with that split, and every error is within 1.5x bmm's (or the noise floor)."""
    build_pam = bench().build_pam

    def split_pam(channels, seed):
        pam = build_pam(channels, seed)
        pam.value_split = split
        return pam

    monkeypatch.setattr(bench(), "build_pam", split_pam)
    errors = bench().measure(setting, variant, low_is_fast, seeds=(0, 1, 2, 3))
    assert last_attention_backend() == "sdpa" and _sdpa.last_sdpa_plan().parts == split
    reference = bmm_errors(setting)
    for name, error in errors.items():
        if "inference" in variant and name != "output":
            continue  # not computed without gradients
        bound = max(1.5 * reference[name], bench().NOISE_FLOOR)
        assert error <= bound, f"{name}: {error:.2e} > 1.5 x bmm's {reference[name]:.2e}"


@pytest.mark.parametrize(("variant", "setting", "split"), CONTRACT_CASES)
def test_split_holds_the_precision_contract(monkeypatch, variant, setting, split):
    # The low-precision value path: inference then feeds the kernel split bf16/fp16 q and k.
    assert_split_holds_the_contract(monkeypatch, variant, setting, split, low_is_fast=True)


def qkv(batch, query_positions, key_positions, key_dim, value_dim, dtype=torch.float32):
    gen = torch.Generator().manual_seed(query_positions + 10 * value_dim)
    shapes = [(batch, query_positions, key_dim), (batch, key_positions, key_dim),
              (batch, key_positions, value_dim)]  # fmt: skip
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


@pytest.mark.parametrize("split", [None, 1, 2, 4, 5, 13])
def test_split_equals_bmm_with_gradients_for_odd_shapes(split):
    # Queries != keys, widths 5 and 13: every split pads somewhere (13 = 5 x 3 - 2 ...).
    tensors = qkv(3, 11, 17, key_dim=5, value_dim=13)
    results = {}
    for backend in ("bmm", "sdpa"):
        out = position_attention(*tensors, backend=backend, value_split=split)
        weight = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        results[backend] = (out, *torch.autograd.grad((out * weight).sum(), tensors))
    assert last_attention_backend() == "sdpa"
    plan = _sdpa.last_sdpa_plan()
    assert plan.parts == (split or 1) and plan.qk_width == plan.value_width  # CPU: one width
    for ours, expected in zip(results["sdpa"], results["bmm"]):
        assert relative_error(ours, expected) < 1e-5
    assert relative_error(results["sdpa"][0], float64_attention(*tensors)) < 1e-5


def test_gradcheck_float64_with_an_uneven_split():
    tensors = qkv(1, 4, 5, key_dim=3, value_dim=7, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda q, k, v: position_attention(q, k, v, backend="sdpa", value_split=3), tensors
    )


class KernelCalls(TorchDispatchMode):
    """Records the shapes and strides of the tensors handed to SDPA kernels."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if "scaled_dot_product" in name:
            tensors = [(tuple(a.shape), a.stride()) for a in args if isinstance(a, torch.Tensor)]
            self.calls.append((name, tensors))
        return func(*args, **(kwargs or {}))


def test_cpu_runs_the_flash_kernel_on_value_parts_with_expanded_queries_and_keys():
    query, key, value = qkv(2, 40, 40, key_dim=8, value_dim=64)
    with torch.profiler.profile() as profile:
        position_attention(query, key, value, backend="sdpa", value_split=8).sum().backward()
    ops = {event.name for event in profile.events()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in ops
    assert not any("math" in name for name in ops), sorted(ops)
    with KernelCalls() as record:
        position_attention(query, key, value, backend="sdpa", value_split=8).sum().backward()
    forward = [tensors for name, tensors in record.calls if not name.endswith("backward")]
    q, k, v = forward[0][:3]
    assert q[0] == k[0] == v[0] == (2, 8, 40, 8)  # 8 heads of width 8
    assert q[1][1] == 0 and k[1][1] == 0  # repeated over the heads by a stride-0 view
    assert v[1][1] == 8  # the value's parts are a view of its columns


def test_cpu_default_splits_pams_values_to_the_query_width():
    # 64/512 (PAM C=512) on CPU: 8 x 64 heads, as many FLOPs as one padded 512-wide head.
    query, key, value = qkv(1, 20, 20, key_dim=64, value_dim=512)
    out = position_attention(query, key, value, backend="sdpa")
    assert _sdpa.last_sdpa_plan() == KernelPlan("flash", 8, 64, 64)
    assert relative_error(out, float64_attention(query, key, value)) < 1e-5


def test_split_compiles_as_one_graph_before_any_eager_call(monkeypatch):
    # The device reading and the plan happen while tracing (nothing cached from eager calls).
    monkeypatch.setattr(_sdpa, "_SPECS", {})
    monkeypatch.setattr(_sdpa, "_PLANS", {})
    torch._dynamo.reset()
    tensors = [t.detach() for t in qkv(1, 12, 12, key_dim=4, value_dim=16)]
    compiled = torch.compile(
        lambda q, k, v: position_attention(q, k, v, backend="sdpa"), backend="eager",
        fullgraph=True,
    )  # fmt: skip
    out = compiled(*tensors)
    assert relative_error(out, float64_attention(*tensors)) < 1e-5


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "8"])
def test_bad_value_split_is_refused(bad):
    with pytest.raises(ValueError, match="value_split must be a positive int"):
        position_attention(*qkv(1, 4, 4, 2, 6), value_split=bad)
    with pytest.raises(ValueError, match="value_split must be a positive int"):
        PAM(16, value_split=bad)


def test_value_split_wider_than_the_values_is_refused():
    with pytest.raises(ValueError, match="value_split must be at most the value width 6"):
        position_attention(*qkv(1, 4, 4, 2, 6), value_split=7)
    with pytest.raises(ValueError, match="value_split must be at most channels=16"):
        PAM(16, value_split=17)


def test_value_split_is_ignored_by_bmm_and_chunked():
    tensors = qkv(1, 9, 9, 2, 6)
    expected = position_attention(*tensors, backend="bmm")
    for backend in ("bmm", "chunked"):
        out = position_attention(*tensors, backend=backend, value_split=3, chunk_size=4)
        assert last_attention_backend() == backend
        assert relative_error(out, expected) < 1e-6


# The kernel table, for devices this machine does not have. cuDNN versions as torch reports
# them: 91002 = 9.10.2, 92300 = 9.23.
H200_NEW_CUDNN = DeviceSpec("cuda", (9, 0), 92300)
H200_CUDNN_9_10 = DeviceSpec("cuda", (9, 0), 91002)
H200_CUDNN_9_11 = DeviceSpec("cuda", (9, 0), 91100)
A100 = DeviceSpec("cuda", (8, 0), 91002)
RTX_3090 = DeviceSpec("cuda", (8, 6), 91002)
T4 = DeviceSpec("cuda", (7, 5), 91002)
CPU = DeviceSpec("cpu")


@pytest.mark.parametrize(
    ("spec", "dtype", "qk", "value", "grad", "expected"),
    [
        # PAM C=512 inference under autocast: split bf16 q/k are 3 x 64 = 192 wide.
        (H200_NEW_CUDNN, BF16, 192, 512, False,
         ["cudnn 2x192/256", "flash 2x256/256", "efficient 1x192/512"]),
        (H200_CUDNN_9_10, BF16, 192, 512, False, ["flash 2x256/256", "efficient 1x192/512"]),
        (H200_CUDNN_9_11, BF16, 192, 512, False,  # its (192, 128) special case
         ["cudnn 4x192/128", "flash 2x256/256", "efficient 1x192/512"]),
        # 64/512 in half precision: cuDNN 2 x 256 forward on new Hopper builds; their
        # width-256 backward takes only 256/256, so training splits to 128.
        (H200_NEW_CUDNN, BF16, 64, 512, False,
         ["cudnn 2x64/256", "flash 2x256/256", "efficient 1x64/512"]),
        (H200_NEW_CUDNN, BF16, 64, 512, True,
         ["cudnn 4x64/128", "flash 2x256/256", "efficient 1x64/512"]),
        (A100, FP16, 64, 512, True, ["cudnn 4x64/128", "flash 2x256/256", "efficient 1x64/512"]),
        # float32 (training holds the contract in float32): only the memory-efficient kernel.
        (H200_NEW_CUDNN, FP32, 64, 512, True, ["efficient 1x64/512"]),
        (T4, FP16, 64, 512, False, ["efficient 1x64/512"]),  # no flash/cuDNN before sm80
        (T4, BF16, 64, 512, False, []),  # nor bfloat16
        (T4, FP32, 6, 13, False, ["efficient 1x6/13"]),  # float32 below sm80: no alignment
        (A100, FP32, 6, 13, False, ["efficient 1x8/16"]),  # sm80: multiples of 4
        (A100, BF16, 6, 13, False, ["cudnn 1x8/16", "flash 1x16/16", "efficient 1x8/16"]),
        (CPU, FP32, 64, 512, False, ["flash 8x64/64"]),
        (CPU, BF16, 192, 512, False, ["flash 2x256/256"]),  # 1 x 512 costs as much: more heads
        (CPU, FP32, 5, 13, True, ["flash 1x13/13"]),
    ],
)  # fmt: skip
def test_kernel_table_picks_the_plans(spec, dtype, qk, value, grad, expected):
    plans = candidate_plans(spec, dtype, qk, value, grad)
    assert [str(plan) for plan in plans] == expected


def test_kernel_table_limits():
    # Flash: equal widths up to 256; its backward on sm86-89 fails for widths in (192, 224].
    assert kernel_accepts("flash", A100, BF16, 256, 256, grad=True)
    assert not kernel_accepts("flash", A100, BF16, 264, 264, grad=False)
    assert not kernel_accepts("flash", A100, BF16, 64, 128, grad=False)
    assert not kernel_accepts("flash", RTX_3090, BF16, 200, 200, grad=True)
    assert kernel_accepts("flash", RTX_3090, BF16, 200, 200, grad=False)
    assert kernel_accepts("flash", RTX_3090, BF16, 256, 256, grad=True)
    # cuDNN: up to 128 (256 on Hopper with a new cuDNN), multiples of 8, not one key.
    assert not kernel_accepts("cudnn", A100, BF16, 64, 256, grad=False)
    assert kernel_accepts("cudnn", H200_NEW_CUDNN, BF16, 64, 256, grad=False)
    assert not kernel_accepts("cudnn", H200_NEW_CUDNN, BF16, 64, 256, grad=True)
    assert kernel_accepts("cudnn", H200_NEW_CUDNN, BF16, 256, 256, grad=True)
    assert not kernel_accepts("cudnn", H200_NEW_CUDNN, BF16, 60, 64, grad=False)
    assert not kernel_accepts("cudnn", A100, BF16, 64, 64, grad=False, key_positions=1)
    assert not kernel_accepts("cudnn", DeviceSpec("cuda", (9, 0), 8907), BF16, 64, 64, False)
    assert not kernel_accepts("cudnn", H200_NEW_CUDNN, FP32, 64, 64, grad=False)
    # Memory-efficient: sm50 on, bfloat16 from sm80, aligned widths, any ratio.
    assert kernel_accepts("efficient", T4, FP32, 64, 512, grad=True)
    assert not kernel_accepts("efficient", DeviceSpec("cuda", (3, 7)), FP32, 64, 64, False)
    assert not kernel_accepts("efficient", A100, BF16, 60, 512, grad=False)  # 8 for halves
    assert not kernel_accepts("efficient", CPU, FP32, 64, 64, grad=False)
    assert not kernel_accepts("cudnn", CPU, FP32, 64, 64, grad=False)


def test_forced_split_keeps_its_parts_on_every_kernel():
    plans = candidate_plans(H200_NEW_CUDNN, BF16, 64, 512, False, parts=8)
    assert [str(plan) for plan in plans] == [
        "cudnn 8x64/64", "flash 8x64/64", "efficient 8x64/64"
    ]  # fmt: skip
    assert [str(p) for p in candidate_plans(CPU, FP32, 64, 512, True, parts=3)] == [
        "flash 3x171/171"
    ]
    assert candidate_plans(A100, BF16, 64, 512, False, parts=1)[0].kernel == "efficient"


@pytest.fixture
def fake_device(monkeypatch):
    """Make the capability query report ``spec`` for this machine's CPU tensors, and let a
    math stand-in play every fused kernel (recording what it was handed). Low-precision
    matmuls count as fast (as on a GPU), so half values keep a half value path."""
    calls = []

    def fake(spec, turned_down=()):
        monkeypatch.setattr(_sdpa, "device_spec", lambda device: spec)
        monkeypatch.setattr(_sdpa, "_PLANS", {})
        fast = {("cpu", dtype): True for dtype in _precision.LOW_PRECISION_DTYPES}
        monkeypatch.setattr(_precision, "_LOW_PRECISION_IS_FASTER", fast)

        def run(kernel, query, key, value):
            expanded = query.stride(1) == 0 or query.shape[1] == 1  # repeated heads, no copy
            calls.append((kernel, tuple(query.shape), expanded, tuple(value.shape)))
            if kernel in turned_down:
                return None  # as torch answers "No available kernel"
            weights = (query.double() @ key.double().transpose(-1, -2)).softmax(-1)
            return (weights @ value.double()).to(value.dtype)

        monkeypatch.setattr(_sdpa, "_run", run)
        return calls

    return fake


def test_dispatch_follows_the_table_for_a_faked_device(fake_device):
    calls = fake_device(H200_NEW_CUDNN, turned_down=("cudnn",))
    gen = torch.Generator().manual_seed(3)
    query, key = (torch.randn(2, 30, 64, generator=gen) for _ in range(2))
    value = torch.randn(2, 30, 512, generator=gen)
    with torch.no_grad():
        out = position_attention(query, key, value.bfloat16(), backend="sdpa")
    # bf16 inference: split q/k 192 wide; cuDNN (turned down by "torch"), then flash 2 x 256.
    # cuDNN gets copied q/k (torch <= 2.11 mislays its output for stride-0 heads).
    assert calls == [("cudnn", (2, 2, 30, 192), False, (2, 2, 30, 256)),
                     ("flash", (2, 2, 30, 256), True, (2, 2, 30, 256))]  # fmt: skip
    assert _sdpa.last_sdpa_plan() == KernelPlan("flash", 2, 256, 256)
    assert relative_error(out, float64_attention(query, key, value)) < 1e-2  # bf16 values


def test_dispatch_runs_float32_training_on_the_memory_efficient_kernel(fake_device):
    calls = fake_device(A100)
    tensors = qkv(1, 12, 12, key_dim=6, value_dim=13)
    out = position_attention(*tensors, backend="sdpa")
    # Aligned to 4 (sm80 float32): 6 -> 8 and 13 -> 16 zero-padded, cut off again.
    assert calls == [("efficient", (1, 1, 12, 8), True, (1, 1, 12, 16))]
    assert out.shape == (1, 12, 13)
    assert relative_error(out, float64_attention(*tensors)) < 1e-6


def test_dispatch_falls_back_when_the_faked_device_takes_nothing(fake_device):
    calls = fake_device(T4)  # bfloat16 needs sm80
    query, key, value = (t.detach() for t in qkv(1, 8, 8, key_dim=4, value_dim=8))
    with torch.no_grad(), pytest.warns(UserWarning, match="using the 'chunked' backend"):
        position_attention(query.bfloat16(), key.bfloat16(), value.bfloat16(), backend="sdpa")
    assert calls == [] and last_attention_backend() == "chunked"

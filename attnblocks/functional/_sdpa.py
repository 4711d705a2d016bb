"""Position attention through torch's fused ``scaled_dot_product_attention`` kernels.

PAM's query/key width (``C / 8``) differs from its value width (``C``), and the fused
kernels limit the widths they take: the CPU flash kernel and the CUDA flash kernel want
one width for q, k and v (CUDA: at most 256), cuDNN takes each width up to 128 (256 on
Hopper/Blackwell with a recent cuDNN), the CUDA memory-efficient kernel takes any widths
(aligned) but is the slowest of the three. The output is linear in the values::

    softmax(q k^T) [v_1 .. v_p] = [softmax(q k^T) v_1 .. softmax(q k^T) v_p]

so the value width is split into ``p`` equal parts that the kernel sees as ``p`` heads,
with q and k repeated over the heads by ``expand`` (a stride-0 view, no copy, except for
cuDNN: :func:`kernel_inputs`; autograd sums their gradients over the heads). A width that
does not divide gets zero value columns (they come out as zero columns and are cut off);
a kernel that wants one width gets zero query/key features (they add nothing to
``q . k``) or zero value columns.
Which kernel and split, the *plan*, comes from :func:`kernel_accepts`, a transcription of
torch's ``sdp_utils`` checks (``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp`` and
``sdp_utils_cpp.cpp``) for a device capability, dtype and widths; on a CUDA device torch's
own report (``torch.backends.cuda.can_use_*_attention``) on the split tensors has the last
word, as it knows the build, cuDNN's frontend and runtime switches.

Per kernel the plan with the fewest kernel FLOPs, ``parts * (qk width + value width)``
per query-key pair, is kept; CUDA kernels are tried in the order cuDNN, flash,
memory-efficient (reasoned: the first two run on the newer tensor-core code paths; the
``"auto"`` backend measures instead, see ``_autotune.py``). On CPU the flash kernel's
splits of equal FLOPs differ in parallelism: its backward runs one thread per
(batch, head), so among equal costs the most parts win (PAM's 64/512: 8 x 64, where a
single 512-wide head leaves all but one thread idle in the backward).

The MATH kernel, which builds the full ``N x N`` matrix, is never allowed: when no
fused kernel accepts the inputs the caller falls back to the chunked backend.

Mixed precision: a fused kernel takes one dtype, and float16/bfloat16 queries and
keys cost PAM several percent of its output. So queries and keys are split into a
rounded part and the rounding's remainder, ``q = q_hi + q_lo`` (both in the low
dtype), and the kernel gets ``q' = [q_hi, q_hi, q_lo]``, ``k' = [k_hi, k_lo, k_hi]``:
its float32 accumulation of ``q' . k'`` is ``q.k`` up to the tiny ``q_lo . k_lo``.
That holds PAM's output to the naive computation's error, but the fused backward rounds
``dQ``/``dK`` to the low dtype and takes its softmax correction from the rounded output,
which misses the precision contract on the query/key gradients (docs/precision.md). So the split
serves calls without gradients (inference); with gradients the kernel runs in float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ._backends import needs_grad
from ._precision import autocast_disabled

try:  # torch >= 2.3
    from torch.nn.attention import SDPBackend, sdpa_kernel

    _SDP_BACKENDS = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }
except ImportError:  # older torch: no way to forbid MATH, so this backend is unavailable
    sdpa_kernel = None
    _SDP_BACKENDS = {}

#: The fused kernels tried per device type, in order of preference.
KERNELS_BY_DEVICE: dict[str, tuple[str, ...]] = {
    "cpu": ("flash",),
    "cuda": ("cudnn", "flash", "efficient"),
}
# What torch raises when no allowed kernel accepts the inputs or none is allowed on the device.
_NO_KERNEL_MESSAGES = ("No available kernel", "No viable backend")
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_HALF_DTYPES = (torch.float16, torch.bfloat16)
_PLANS: dict[tuple, tuple[KernelPlan, ...]] = {}  # plans per device, dtype, widths, ...
_SPECS: dict[str, DeviceSpec] = {}  # capability per device
_record = threading.local()


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """What the kernel table needs to know of a device.

    Attributes:
        type: ``"cpu"`` or ``"cuda"``.
        capability: CUDA compute capability ``(major, minor)``; None on CPU.
        cudnn: cuDNN's runtime version as torch reports it (``91002`` for 9.10.2), or None.
    """

    type: str
    capability: tuple[int, int] | None = None
    cudnn: int | None = None


@dataclasses.dataclass(frozen=True)
class KernelPlan:
    """One way to run position attention on a fused kernel.

    Attributes:
        kernel: ``"flash"`` (on CPU, torch's CPU flash kernel), ``"efficient"`` or ``"cudnn"``.
        parts: how many parts the value width is split into (heads of the kernel).
        qk_width: query/key width the kernel sees (zero-padded).
        value_width: width of each value part the kernel sees (zero-padded).
    """

    kernel: str
    parts: int
    qk_width: int
    value_width: int

    @property
    def cost(self) -> int:
        """Kernel multiply-adds per query-key pair: ``parts * (qk_width + value_width)``."""
        return self.parts * (self.qk_width + self.value_width)

    def __str__(self) -> str:
        return f"{self.kernel} {self.parts}x{self.qk_width}/{self.value_width}"


def _read_device(device_type: str, index: int | None) -> tuple:
    """``(type, capability, cuDNN version)`` of a device, read from torch."""
    if device_type != "cuda":
        return device_type, None, None
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return device_type, tuple(torch.cuda.get_device_capability(index)), cudnn


if hasattr(torch.compiler, "assume_constant_result"):
    # A compiled graph takes the reading as a constant instead of tracing torch's queries.
    _read_device = torch.compiler.assume_constant_result(_read_device)


def device_spec(device: torch.device) -> DeviceSpec:
    """The capability query: the :class:`DeviceSpec` of ``device``, read once per device.

    Args:
        device: where the attention runs.
    """
    name = str(device)
    spec = _SPECS.get(name)
    if spec is None:
        spec = DeviceSpec(*_read_device(device.type, device.index))
        if not torch.compiler.is_compiling():
            _SPECS[name] = spec
    return spec


def _within(capability: tuple[int, int], low: tuple[int, int], high: tuple[int, int]) -> bool:
    return low <= capability <= high


def alignment(kernel: str, spec: DeviceSpec, dtype: torch.dtype) -> int:
    """The multiple every width must be for ``kernel`` (torch's alignment rule, or 8 where
    the kernel would pad to 8 itself).

    Args:
        kernel: the kernel's name.
        spec: the device.
        dtype: the dtype the kernel runs in.
    """
    if spec.type != "cuda" or spec.capability is None:
        return 1
    if kernel != "efficient":
        return 8
    # torch's minimum_gemm_alignment: 4 on sm80+, 128 bits on tensor cores (sm80+, or sm7x halves).
    half = dtype in _HALF_DTYPES
    major = spec.capability[0]
    aligned = 4 if major >= 8 else 1
    if major >= 8 or (major >= 7 and half):
        aligned = max(aligned, 128 // (16 if half else 32))
    return aligned


def kernel_accepts(
    kernel: str,
    spec: DeviceSpec,
    dtype: torch.dtype,
    qk_width: int,
    value_width: int,
    grad: bool,
    key_positions: int = 2,
) -> bool:
    """Whether torch's ``kernel`` takes one head of these widths (the kernel table).

    A transcription of torch's ``sdp_utils`` checks for dense inputs without mask, dropout
    or causal masking: device capability, dtype, widths, alignment, and the limits of the
    backward pass when gradients are needed. It does not see what only a live device knows
    (build flags, cuDNN's frontend version, kernels switched off at run time): on CUDA,
    torch's own ``can_use_*_attention`` confirms a plan before it runs.

    Args:
        kernel: ``"flash"``, ``"efficient"`` or ``"cudnn"``.
        spec: the device (:func:`device_spec`).
        dtype: the dtype of q, k and v.
        qk_width: query/key width.
        value_width: value width.
        grad: whether the backward pass will run.
        key_positions: number of key positions (cuDNN rejects 1).
    """
    if spec.type == "cpu":  # sdp_utils_cpp: one width for q, k and v, four dtypes
        return kernel == "flash" and dtype in _FUSED_DTYPES and qk_width == value_width
    if spec.type != "cuda" or spec.capability is None:
        return False
    capability, half = spec.capability, dtype in _HALF_DTYPES
    if kernel == "efficient":
        dtypes = _FUSED_DTYPES[:3] if capability >= (8, 0) else (torch.float16, torch.float32)
        step = alignment(kernel, spec, dtype)
        return (
            _within(capability, (5, 0), (12, 1))
            and dtype in dtypes
            and qk_width % step == 0
            and value_width % step == 0
        )
    if not _within(capability, (8, 0), (12, 1)) or not half:
        return False  # flash and cuDNN: Ampere to Blackwell, float16/bfloat16 only
    if kernel == "flash":
        if qk_width != value_width or qk_width > 256:
            return False
        # Its backward fails for widths in (192, 224] on sm86-89 and sm120-121.
        consumer = _within(capability, (8, 6), (8, 9)) or _within(capability, (12, 0), (12, 1))
        return not (grad and consumer and 192 < qk_width <= 224)
    if kernel != "cudnn" or spec.cudnn is None or spec.cudnn < 90000 or key_positions == 1:
        return False
    if qk_width % 8 or value_width % 8:
        return False
    hopper_or_blackwell = capability == (9, 0) or capability[0] == 10
    old_sm107 = capability == (10, 7) and spec.cudnn <= 92500
    wide = hopper_or_blackwell and not old_sm107 and spec.cudnn > 92200
    if wide:
        limit = 256
    elif hopper_or_blackwell and spec.cudnn >= 91100 and (qk_width, value_width) == (192, 128):
        limit = 192
    else:
        limit = 128
    if qk_width > limit or value_width > limit:
        return False
    if grad and wide:  # the width-256 builds' backward takes only these shapes
        return (
            (qk_width <= 128 and value_width <= 128)
            or (qk_width, value_width) in ((192, 128), (256, 256))
        )  # fmt: skip
    return True


def _round_up(width: int, step: int) -> int:
    return -(-width // step) * step


def _plan(kernel: str, spec: DeviceSpec, dtype: torch.dtype, qk: int, value: int, parts: int):
    """The widths ``kernel`` sees with ``value`` split into ``parts``; None if it cannot."""
    step = alignment(kernel, spec, dtype)
    qk_width, part_width = _round_up(qk, step), _round_up(-(-value // parts), step)
    if kernel == "flash":  # one width for q, k and v: zero-pad the narrower side
        qk_width = part_width = max(qk_width, part_width)
    return KernelPlan(kernel, parts, qk_width, part_width)


def candidate_plans(
    spec: DeviceSpec,
    dtype: torch.dtype,
    qk_width: int,
    value_width: int,
    grad: bool,
    *,
    key_positions: int = 2,
    parts: int | None = None,
) -> tuple[KernelPlan, ...]:
    """The plan of each kernel that takes these inputs, in the order they are tried.

    Per kernel the split with the fewest kernel FLOPs (:attr:`KernelPlan.cost`); among
    equal costs the fewest parts on CUDA (least repeated query/key work), the most on CPU
    (the flash kernel's backward parallelises over batch x heads only).

    Args:
        spec: the device (:func:`device_spec`).
        dtype: the dtype the kernel runs in.
        qk_width: query/key width ``D``.
        value_width: value width ``D_v``.
        grad: whether the backward pass will run.
        key_positions: number of key positions.
        parts: force this many value parts (``value_split``); None lets the cost decide.
    """
    plans = []
    for kernel in KERNELS_BY_DEVICE.get(spec.type, ()):
        accepted = []
        for count in (parts,) if parts is not None else range(1, value_width + 1):
            plan = _plan(kernel, spec, dtype, qk_width, value_width, count)
            if parts is None and (count - 1) * plan.value_width >= value_width:
                continue  # a part would hold nothing but padding
            if kernel_accepts(kernel, spec, dtype, plan.qk_width, plan.value_width, grad,
                              key_positions):  # fmt: skip
                accepted.append(plan)
        if not accepted:
            continue
        cheapest = min(plan.cost for plan in accepted)
        tied = [plan for plan in accepted if plan.cost == cheapest]  # fewest parts first
        plans.append(tied[-1] if spec.type == "cpu" else tied[0])
    return tuple(plans)


def plans_for(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    value_split: int | None = None,
    kernel: str | None = None,
) -> tuple[KernelPlan, ...]:
    """The plans :func:`sdpa_position_attention` tries for these kernel inputs, in order.

    Args:
        query: ``(B, N_q, D)`` in the kernel's dtype.
        key: ``(B, N_k, D)`` in the kernel's dtype.
        value: ``(B, N_k, D_v)`` in the kernel's dtype.
        value_split: force this many value parts; None: the cheapest per kernel.
        kernel: only this kernel's plan; None: every kernel's.
    """
    spec = device_spec(query.device)
    grad = needs_grad(query, key, value)
    cache_key = (spec, query.dtype, query.shape[-1], value.shape[-1], grad, min(key.shape[1], 2),
                 value_split)  # fmt: skip
    plans = _PLANS.get(cache_key)
    if plans is None:
        plans = candidate_plans(spec, query.dtype, query.shape[-1], value.shape[-1], grad,
                                key_positions=key.shape[1], parts=value_split)  # fmt: skip
        if not torch.compiler.is_compiling():
            _PLANS[cache_key] = plans
    return tuple(plan for plan in plans if kernel is None or plan.kernel == kernel)


def last_sdpa_plan() -> KernelPlan | None:
    """The plan that ran the last fused call of this thread (None before the first)."""
    return getattr(_record, "plan", None)


def _quiet() -> contextlib.AbstractContextManager:
    """Silence torch's warning per kernel it rejects (we report one fallback instead); not
    while compiling, where the fallback cannot happen and warning filters cannot be traced."""
    return contextlib.nullcontext() if torch.compiler.is_compiling() else _ignoring_warnings()


@contextlib.contextmanager
def _ignoring_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _pad_last(tensor: Tensor, width: int) -> Tensor:
    """``tensor`` with zero features appended to reach ``width`` in its last dimension,
    contiguous (fused kernels need unit stride in the last dimension)."""
    extra = width - tensor.shape[-1]
    return F.pad(tensor, (0, extra)) if extra > 0 else tensor.contiguous()


def _split(tensor: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``tensor`` as ``hi + lo``, both in ``dtype``: ``hi`` rounded, ``lo`` what rounding lost."""
    high = tensor.to(dtype)
    return high, (tensor - high.to(tensor.dtype)).to(dtype)


def split_query_key(query: Tensor, key: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Low-precision ``q'``, ``k'`` of 3x the width whose dot products are ``q . k``
    up to ``q_lo . k_lo`` (see the module docstring).

    Args:
        query: ``(B, N_q, D)`` in float32.
        key: ``(B, N_k, D)`` in float32.
        dtype: float16 or bfloat16.

    Returns:
        ``(B, N_q, 3D)`` and ``(B, N_k, 3D)`` tensors in ``dtype``.
    """
    query_high, query_low = _split(query, dtype)
    key_high, key_low = _split(key, dtype)
    return (
        torch.cat([query_high, query_high, query_low], dim=-1),
        torch.cat([key_high, key_low, key_high], dim=-1),
    )


def _fits(split: tuple[Tensor, Tensor]) -> bool:
    """Whether split queries and keys are finite. bfloat16 has float32's range; float16
    is checked eagerly (a compiled graph cannot branch on data and assumes it fits; a CUDA
    graph being captured cannot read data either, and takes the float32 kernel)."""
    if split[0].dtype == torch.bfloat16 or torch.compiler.is_compiling():
        return True
    if split[0].is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    return all(bool(part.isfinite().all()) for part in split)


def kernel_inputs(
    query: Tensor, key: Tensor, value: Tensor, plan: KernelPlan
) -> tuple[Tensor, Tensor, Tensor]:
    """q, k and v as ``plan``'s kernel takes them: ``(B, parts, N, width)`` each.

    Queries and keys are zero-padded once and expanded over the parts (stride 0: no
    copy; cuDNN gets copies, see below); the value is zero-padded to
    ``parts * value_width`` and viewed as parts.

    Args:
        query: ``(B, N_q, D)``.
        key: ``(B, N_k, D)``.
        value: ``(B, N_k, D_v)``.
        plan: the kernel plan.
    """
    parts = plan.parts
    q = _pad_last(query, plan.qk_width)[:, None].expand(-1, parts, -1, -1)
    k = _pad_last(key, plan.qk_width)[:, None].expand(-1, parts, -1, -1)
    v = rearrange(_pad_last(value, parts * plan.value_width), "b n (p w) -> b p n w", p=parts)
    if plan.kernel == "cudnn" and parts > 1:
        # Up to torch 2.11 at least, the cuDNN path derives its output's strides from q's,
        # where a stride-0 head dimension ties with the last one: a non-unit output stride
        # that cuDNN rejects (fixed by pytorch/pytorch#175764, merged 2026-02-28). Copies
        # of the queries and keys (narrow beside the values) avoid it.
        q, k = q.contiguous(), k.contiguous()
    return q, k, v


def _torch_accepts(kernel: str, query: Tensor, key: Tensor, value: Tensor) -> bool:
    """torch's own verdict on CUDA (``can_use_*_attention``); True where it cannot be asked
    (CPU, where the table is torch's rule; while compiling; a torch without the query)."""
    if query.device.type != "cuda" or torch.compiler.is_compiling():
        return True
    backends = torch.backends.cuda
    ask = {
        "flash": getattr(backends, "can_use_flash_attention", None),
        "efficient": getattr(backends, "can_use_efficient_attention", None),
        "cudnn": getattr(backends, "can_use_cudnn_attention", None),
    }[kernel]
    if ask is None or not hasattr(backends, "SDPAParams"):
        return True
    try:
        params = backends.SDPAParams(query, key, value, None, 0.0, False, False)
    except TypeError:  # a torch whose SDPAParams takes other arguments: let the call decide
        return True
    return bool(ask(params))


def _run(kernel: str, query: Tensor, key: Tensor, value: Tensor) -> Tensor | None:
    """``kernel`` on ``(B, parts, N, width)`` inputs, or None when torch says it cannot."""
    try:
        with sdpa_kernel([_SDP_BACKENDS[kernel]]), autocast_disabled(query.device), _quiet():
            return F.scaled_dot_product_attention(query, key, value, scale=1.0)  # no 1/sqrt(d)
    except RuntimeError as error:
        if not any(reason in str(error) for reason in _NO_KERNEL_MESSAGES):
            raise  # a real failure (out of memory, bad input) is not a reason to fall back
        return None


def kernel_operands(query: Tensor, key: Tensor, value: Tensor, grad: bool) -> tuple[Tensor, ...]:
    """q, k and v in the one dtype a fused kernel takes, before splitting and padding.

    With a low-precision value path, queries and keys become the split low-precision
    ``q'``, ``k'`` of :func:`split_query_key` when the kernel's backward will not run
    (``grad`` False) and they fit float16's range; else the value is raised to the
    queries' dtype (the kernel runs in float32).

    Args:
        query: ``(B, N_q, D)`` in the compute dtype.
        key: ``(B, N_k, D)`` in the compute dtype.
        value: ``(B, N_k, D_v)`` in the value path's dtype.
        grad: whether the kernel's own backward will run.
    """
    if value.dtype == query.dtype:
        return query, key, value
    # Gradients: the fused backward rounds dQ and dK to the low dtype and takes its softmax
    # correction from the rounded output, which misses the precision contract
    # (docs/precision.md); queries or keys beyond float16's range do not split.
    split = None if grad else split_query_key(query, key, value.dtype)
    if split is not None and _fits(split):
        return (*split, value)
    return query, key, value.to(query.dtype)


def accepted_plans(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    value_split: int | None = None,
    kernel: str | None = None,
) -> Iterator[tuple[KernelPlan, tuple[Tensor, Tensor, Tensor]]]:
    """Each plan of :func:`plans_for` that torch accepts, with its kernel inputs, in order.

    Args:
        query: ``(B, N_q, D)`` in the kernel's dtype.
        key: ``(B, N_k, D)`` in the kernel's dtype.
        value: ``(B, N_k, D_v)`` in the kernel's dtype.
        value_split: force this many value parts; None: the cheapest per kernel.
        kernel: only this kernel's plan; None: every kernel's.
    """
    for plan in plans_for(query, key, value, value_split, kernel):
        inputs = kernel_inputs(query, key, value, plan)
        if _torch_accepts(plan.kernel, *inputs):
            yield plan, inputs


def record_plan(plan: KernelPlan) -> None:
    """Remember the plan that ran this thread's last fused call (:func:`last_sdpa_plan`)."""
    if not torch.compiler.is_compiling():
        _record.plan = plan


def merge_parts(out: Tensor, value_width: int) -> Tensor:
    """The kernel's ``(B, parts, N_q, part width)`` output as ``(B, N_q, value_width)``."""
    return rearrange(out, "b p n w -> b n (p w)")[..., :value_width]


def sdpa_position_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    value_split: int | None = None,
    kernel: str | None = None,
) -> Tensor | None:
    """softmax(q k^T) v by a fused SDPA kernel, or None when no fused kernel accepts the inputs.

    Args:
        query: ``(B, N_q, D)`` in the compute dtype.
        key: ``(B, N_k, D)`` in the compute dtype.
        value: ``(B, N_k, D_v)`` in the value path's dtype: the compute dtype, or
            float16/bfloat16, in which the kernel then runs on split queries and keys.
        value_split: split the value width into this many equal parts; None: the plan
            of :func:`plans_for` decides.
        kernel: run only this fused kernel (``"flash"``, ``"efficient"``, ``"cudnn"``);
            None: the first kernel whose plan torch accepts.

    Returns:
        ``(B, N_q, D_v)`` in the value's dtype, or None.
    """
    if sdpa_kernel is None or query.dtype not in _FUSED_DTYPES:
        return None
    value_width = value.shape[-1]
    operands = kernel_operands(query, key, value, needs_grad(query, key, value))
    for plan, inputs in accepted_plans(*operands, value_split, kernel):
        out = _run(plan.kernel, *inputs)  # (B, parts, N_q, part width)
        if out is not None:
            record_plan(plan)
            return merge_parts(out, value_width)
    return None

"""Position attention, the core of DANet's PAM.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983

Every query position receives a weighted sum of the values at all key positions,
with weights ``softmax(query @ key^T)`` over the key positions. As in the authors'
code there is NO ``1/sqrt(d)`` scaling of the energies.

Tensors are token-major: ``(batch, positions, features)``; PAM flattens its
``(B, C, H, W)`` maps to ``(B, H*W, C)`` before calling in here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .._validation import check_float_tensor, check_positive_int
from . import _autotune
from ._autotune import Candidate
from ._backends import (
    POSITION_BACKENDS,
    PositionBackend,
    check_backend,
    check_chunk_size,
    get_attention_backend,
    needs_grad,
    record_backend,
)
from ._chunked import chunked_position_attention
from ._fused_forward import chunked_backward_forced, fused_forward_attention, wants_fused_forward
from ._precision import (
    attention_dtype,
    autocast_disabled,
    low_precision_dtype,
    low_precision_is_faster,
    value_path_dtype,
)
from ._sdpa import KERNELS_BY_DEVICE, device_spec, sdpa_position_attention

_TOKEN_AXES = ("batch", "positions", "features")
#: ``"auto"`` uses bmm while one image's ``N_q x N_k`` attention matrix takes at most this
#: many bytes (and the batch's fit in free memory).
BMM_MAX_MATRIX_BYTES = 64 * 2**20
_AUTOMATIC_CHOICES: dict[tuple, Candidate] = {}  # "auto"'s decision per device, dtype, shape...


def _check_query_key(query: Tensor, key: Tensor) -> None:
    check_float_tensor("query", query, _TOKEN_AXES)
    check_float_tensor("key", key, _TOKEN_AXES)
    if query.shape[0] != key.shape[0] or query.shape[2] != key.shape[2]:
        raise ValueError(
            "query and key must share batch size and feature size, got query "
            f"{tuple(query.shape)} and key {tuple(key.shape)}"
        )
    if key.shape[1] == 0:
        raise ValueError(
            f"key must have at least one position (a softmax over none is undefined), got key "
            f"{tuple(key.shape)}"
        )


def _check_scale(scale: float | None) -> float | None:
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"scale must be a positive number or None, got {scale!r}")
    return None if scale == 1 else float(scale)


def _scaled(query: Tensor, scale: float | None) -> Tensor:
    # Scaling the queries scales every energy q . k alike, whichever backend computes them.
    return query if scale is None else query * scale


def position_attention_weights(query: Tensor, key: Tensor, *, scale: float | None = None) -> Tensor:
    """The attention matrix ``softmax(scale * query @ key^T)``, normalised over key positions.

    This is the full ``N_q x N_k`` matrix (what the authors' code builds); use it
    for small maps and for inspection, not at full image resolution.

    Args:
        query: ``(B, N_q, D)`` query features.
        key: ``(B, N_k, D)`` key features.
        scale: factor on the energies; None (PAM, as the authors) means no scaling,
            ``D ** -0.5`` gives scaled dot-product attention (non-local's ``use_scale``).

    Returns:
        ``(B, N_q, N_k)`` weights whose rows sum to 1, in float32 for float16/bfloat16
        inputs (the unscaled energies overflow float16), in the input dtype otherwise.
    """
    _check_query_key(query, key)
    scale = _check_scale(scale)
    dtype = attention_dtype(torch.promote_types(query.dtype, key.dtype))
    with autocast_disabled(query.device):
        query = _scaled(query.to(dtype), scale)
        energy = torch.bmm(query, key.to(dtype).transpose(1, 2))  # (B, N_q, N_k)
        return energy.softmax(dim=-1)  # over key positions: each query's row sums to 1


def _position_attention_bmm(
    query: Tensor, key: Tensor, value: Tensor, scale: float | None
) -> Tensor:
    weights = position_attention_weights(query, key, scale=scale)  # (B, N_q, N_k)
    # The value path runs in the value's dtype: probabilities in [0, 1] are safe in half precision.
    return torch.bmm(weights.to(value.dtype), value)  # (B, N_q, D_v)


def _free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` now, or None where that is unknown."""
    if torch.compiler.is_compiling():
        return None
    if device.type == "cuda":
        # Memory torch's caching allocator holds but does not use is free for our tensors too.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    if device.type == "cpu":
        free = _system_free_memory()
        headroom = _cgroup_headroom()  # a container's limit, which /proc/meminfo does not show
        known = [value for value in (free, headroom) if value is not None]
        return min(known) if known else None
    return None


def _system_free_memory() -> int | None:
    """The machine's free memory plus the page cache it can reclaim, or None if unknown."""
    try:  # Linux
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not a POSIX system that reports it
        return None


CGROUP_ROOT = "/sys/fs/cgroup"
# (limit, usage, reclaimable-cache key of memory.stat) for cgroup v2 and v1
_CGROUP_FILES = (
    ("memory.max", "memory.current", "inactive_file"),
    ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "total_inactive_file"),
)


def _cgroup_headroom() -> int | None:
    """Bytes this process's memory cgroup (a container's limit) can still take, or None.

    The limit minus the usage, plus the inactive file cache that the kernel reclaims
    before it kills; None without a limit (cgroup v1 writes "no limit" as ~2**63).
    """
    for limit_file, usage_file, cache_key in _CGROUP_FILES:
        try:
            with open(os.path.join(CGROUP_ROOT, limit_file)) as file:
                limit_text = file.read().strip()
            if limit_text == "max" or int(limit_text) >= 2**60:
                return None
            with open(os.path.join(CGROUP_ROOT, usage_file)) as file:
                usage = int(file.read())
            stat_file = os.path.join(CGROUP_ROOT, os.path.dirname(limit_file), "memory.stat")
            cache = 0
            try:
                with open(stat_file) as file:
                    for line in file:
                        name, value = line.split()
                        if name == cache_key:
                            cache = int(value)
            except (OSError, ValueError):
                pass
            return max(int(limit_text) - usage + cache, 0)
        except (OSError, ValueError):
            continue
    return None


def _check_value_split(value_split: int | None, value: Tensor | None) -> int | None:
    if value_split is None:
        return None
    check_positive_int("value_split", value_split)
    if value is not None and value_split > value.shape[-1]:
        raise ValueError(
            f"value_split must be at most the value width {value.shape[-1]} (every part holds "
            f"at least one feature), got {value_split}"
        )
    return value_split


def _automatic_backend(
    query: Tensor,
    key: Tensor,
    value: Tensor | None,
    chunk_size: int | None = None,
    value_split: int | None = None,
) -> Candidate:
    """``"auto"``'s choice: see :func:`select_position_backend`.

    Decided once per device, dtype, precision, shape and whether gradients are needed,
    so that a training run does not switch backends from one step to the next as free
    memory moves.
    """
    low = low_precision_dtype(query if value is None else value)
    training = needs_grad(query, key, *(() if value is None else (value,)))
    batch, query_positions, key_positions = query.shape[0], query.shape[1], key.shape[1]
    if torch.compiler.is_compiling():
        # A compiled graph holds no memory reading and keys no cache by exact sizes (that would
        # recompile per size): the rule's size test becomes a guard on a range of sizes.
        return Candidate(_choose_automatically(query, key_positions, low, training), value_split)
    value_dtype = None if value is None else value.dtype
    value_width = None if value is None else value.shape[-1]
    shape_key = (query.device, query.dtype, value_dtype, low, training, batch, query_positions,
                 key_positions, value_width, chunk_size, value_split)  # fmt: skip
    choice = _AUTOMATIC_CHOICES.get(shape_key)
    if choice is None:
        rule = Candidate(_choose_automatically(query, key_positions, low, training), value_split)
        choice = rule
        if value is not None and _autotune.probes(query.device):
            choice = _probed_backend(query, key, value, low, training, chunk_size, rule)
        _AUTOMATIC_CHOICES[shape_key] = choice
    return choice


def _choose_automatically(
    query: Tensor, key_positions: int, low: torch.dtype | None, training: bool
) -> str:
    device = query.device
    low_is_fast = low is not None and low_precision_is_faster(device, low)
    # bmm's value path runs in the low-precision dtype (autocast's, or half inputs'); where the
    # device multiplies that slower than float32, the memory-efficient backends, whose value
    # path then runs in float32, beat bmm at every size.
    if _bmm_fits(query, query.shape[1], key_positions) and (low is None or low_is_fast):
        return "bmm"
    if device.type != "cuda":
        return "chunked"  # on CPU the chunked loop beats torch's flash kernel (benchmarks/)
    # CUDA: the fused kernels, in float32 or (inference) on split low-precision queries/keys;
    # training under low precision: chunked, whose value path runs on the low-precision units
    # and whose backward holds the precision contract (sdpa's would run in float32).
    return "chunked" if low_is_fast and training else "sdpa"


def _bmm_fits(query: Tensor, query_positions: int, key_positions: int) -> bool:
    """Whether bmm's matrices for these sizes stay within the memory rule of "auto"."""
    itemsize = torch.empty((), dtype=attention_dtype(query.dtype)).element_size()
    matrix_bytes = query_positions * key_positions * itemsize  # one image's N_q x N_k matrix
    free = _free_memory(query.device)
    # Forward and backward of bmm hold about three such matrices (weights, their grad, a temporary).
    fits = free is None or 4 * query.shape[0] * matrix_bytes <= free
    return matrix_bytes <= BMM_MAX_MATRIX_BYTES and fits


def _probed_backend(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    low: torch.dtype | None,
    training: bool,
    chunk_size: int | None,
    rule: Candidate,
) -> Candidate:
    """``"auto"`` by measurement (``_autotune.py``): the fastest candidate of the shape class
    (``rule`` when none can run); a forced value split (in ``rule``) holds for every sdpa one."""
    device, value_split = query.device, rule.value_split
    query_class, key_class = _autotune.bucket(query.shape[1]), _autotune.bucket(key.shape[1])
    spec = device_spec(device)
    shared_key = (device.type, spec.capability, spec.cudnn, query.dtype, value.dtype, low,
                  training, query.shape[0], query.shape[2], value.shape[2], query_class,
                  key_class, chunk_size, value_split)  # fmt: skip
    kernels = KERNELS_BY_DEVICE[device.type]
    candidates = [Candidate("sdpa", value_split, kernel) for kernel in kernels]
    if training:  # the fused forward with the chunked backward: tensor cores, the contract held
        candidates += [Candidate("sdpa", value_split, kernel, True) for kernel in kernels]
    candidates.append(Candidate("chunked"))
    if _bmm_fits(query, query_class, key_class):  # for the largest sizes of the class
        candidates.append(Candidate("bmm"))
    return _autotune.decide(
        (str(device), *shared_key), shared_key, candidates,
        _probe_runner(query, key, value, training, chunk_size), device, rule, collective=training,
    )  # fmt: skip


def _probe_runner(
    query: Tensor, key: Tensor, value: Tensor, training: bool, chunk_size: int | None
) -> Callable[[Candidate], bool]:
    """A function that runs one candidate once, forward (and backward when ``training``), on
    random inputs of these shapes and dtypes, drawn apart from the global random stream."""
    generator = torch.Generator(device=query.device).manual_seed(0)

    def like(tensor: Tensor) -> Tensor:
        drawn = torch.randn(tensor.shape, generator=generator, device=tensor.device)
        return drawn.to(tensor.dtype).requires_grad_(training and tensor.requires_grad)

    inputs = [like(tensor) for tensor in (query, key, value)]
    out_shape = (query.shape[0], query.shape[1], value.shape[2])
    grad = torch.randn(out_shape, generator=generator, device=value.device)

    def run(candidate: Candidate) -> bool:
        with torch.set_grad_enabled(training):
            backend, split, kernel, chunked_backward = candidate
            out, ran = _attend(*inputs, backend, chunk_size, None, split, kernel,
                               chunked_backward, fallback=False)  # fmt: skip
            if out is None or ran != candidate.backend:
                return False
            if training:
                wanted = [tensor for tensor in inputs if tensor.requires_grad]
                torch.autograd.grad(out, wanted, grad.to(out.dtype))
        return True

    return run


def select_position_backend(
    query: Tensor, key: Tensor, backend: PositionBackend = "auto", *, value: Tensor | None = None
) -> str:
    """The backend :func:`position_attention` uses for these inputs.

    An explicit backend is used as named; ``"auto"`` becomes the global override
    (:func:`set_attention_backend`, ``$ATTNBLOCKS_BACKEND``) when one is set, else:

    - on CUDA, when ``value`` is given: the fastest of bmm (where its matrices fit, as
      below), chunked, the fused kernels with their value splits and, with gradients,
      those kernels' forward with the chunked backward (reported as ``"sdpa"``),
      measured once per shape class on the call's shapes (under ``torch.distributed``
      in training, rank 0 measures and every rank runs its choice); while
      ``torch.compile`` traces, the rule:
    - ``"bmm"`` while one image's ``N_q x N_k`` matrix takes at most
      :data:`BMM_MAX_MATRIX_BYTES`, the batch's fit in free memory, and the call runs in
      float32/float64 or in a low-precision dtype that the device multiplies faster than
      float32 (:func:`low_precision_is_faster`);
    - else ``"chunked"`` on CPU; on CUDA ``"sdpa"``, except when training (gradients
      needed) in a fast low-precision dtype, where ``"chunked"`` runs.

    The decision is made once per device, dtype, precision, shape and gradient mode.
    A ``"sdpa"`` call that no fused kernel accepts still falls back to ``"chunked"``
    (see :func:`last_attention_backend`).

    Args:
        query: ``(B, N_q, D)`` query features.
        key: ``(B, N_k, D)`` key features.
        backend: one of :data:`POSITION_BACKENDS`.
        value: the value features, when known: half-precision values make a
            low-precision call as autocast does.
    """
    return _resolve(query, key, value, backend, None, None).backend


def _resolve(
    query: Tensor,
    key: Tensor,
    value: Tensor | None,
    backend: str,
    value_split: int | None,
    chunk_size: int | None,
) -> Candidate:
    """The backend, value split and kernel a call runs."""
    check_backend(backend, POSITION_BACKENDS)
    named = backend if backend != "auto" else get_attention_backend()
    if named is not None:
        return Candidate(named, value_split, chunked_backward=chunked_backward_forced())
    return _automatic_backend(query, key, value, chunk_size, value_split)


def _attend(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    name: str,
    chunk_size: int | None,
    scale: float | None,
    value_split: int | None = None,
    kernel: str | None = None,
    chunked_backward: bool = False,
    fallback: bool = True,
) -> tuple[Tensor | None, str | None]:
    """The attended values by backend ``name`` and the backend that ran; ``(None, None)``
    when ``"sdpa"`` finds no fused kernel and ``fallback`` is False. ``chunked_backward``:
    an ``"sdpa"`` call with gradients runs the fused forward with the chunked backward."""
    value_dtype = value.dtype
    if name == "bmm":
        return _position_attention_bmm(query, key, value, scale).to(value_dtype), name
    dtype = attention_dtype(torch.promote_types(query.dtype, key.dtype))
    query, key = _scaled(query.to(dtype), scale), key.to(dtype)
    value = value.to(value_path_dtype(value, dtype))  # low precision where it is faster
    out = None
    if name == "sdpa":
        if wants_fused_forward(query, key, value, chunked_backward):
            out = fused_forward_attention(query, key, value, value_split, kernel, chunk_size)
        else:
            out = sdpa_position_attention(query, key, value, value_split, kernel)
        if out is None:
            if not fallback:
                return None, None
            split = "" if value_split is None else f", value split into {value_split}"
            warnings.warn(
                f"no fused scaled_dot_product_attention kernel accepts these inputs "
                f"({dtype}, query {tuple(query.shape)}, value {tuple(value.shape)}{split} on "
                f"{query.device.type}, torch {torch.__version__}); using the 'chunked' "
                "backend instead",
                stacklevel=3,  # the caller of position_attention
            )
            name = "chunked"
    if out is None:
        out = chunked_position_attention(query, key, value, chunk_size)
    return out.to(value_dtype), name


def position_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    backend: PositionBackend = "auto",
    chunk_size: int | None = None,
    scale: float | None = None,
    value_split: int | None = None,
) -> Tensor:
    """``softmax(scale * query @ key^T) @ value`` by the chosen backend; no scaling by default.

    All backends compute the same function (to float rounding), with gradients:

    - ``"bmm"``: the full ``N_q x N_k`` matrix, exactly the authors' computation.
    - ``"chunked"``: query chunks, ``O(N * chunk)`` memory in forward and backward
      (first-order gradients only: no double backward).
    - ``"sdpa"``: torch's fused ``scaled_dot_product_attention`` (never its MATH
      kernel), the value width split into equal parts (heads of the kernel) where that
      lets a faster kernel take the call; falls back to ``"chunked"`` with a warning
      when no fused kernel fits.
    - ``"auto"``: see :func:`select_position_backend`.

    Args:
        query: ``(B, N_q, D)`` query features.
        key: ``(B, N_k, D)`` key features.
        value: ``(B, N_k, D_v)`` value features; ``D_v`` may differ from ``D``.
        backend: one of :data:`POSITION_BACKENDS`.
        chunk_size: query positions per chunk of ``"chunked"``; None derives it from
            a memory budget (:func:`chunk_size_for_memory`). Ignored by the others.
        scale: factor on the energies; None (the default, PAM as the authors wrote it)
            means none, ``D ** -0.5`` gives scaled dot-product attention.
        value_split: ``"sdpa"`` only: split the value width into this many equal parts
            (the last ones zero-padded when it does not divide); None lets the dispatch
            choose the kernel and split from what torch's kernels accept. Ignored by
            ``"bmm"`` and ``"chunked"``.

    Returns:
        ``(B, N_q, D_v)`` attended values in the value's dtype. Energies and softmax
        run in at least float32, also under ``torch.autocast``. The value-path matmuls
        (``P V``; ``P^T dO`` and ``dO V^T`` in backward) run in the call's low-precision
        dtype (autocast's, or half values') with ``"bmm"``, and with the memory-efficient
        backends where the device multiplies that dtype faster than float32
        (:func:`low_precision_is_faster`), else in float32.
    """
    check_chunk_size(chunk_size)
    scale = _check_scale(scale)
    _check_query_key(query, key)
    check_float_tensor("value", value, _TOKEN_AXES)
    if value.shape[:2] != key.shape[:2]:
        raise ValueError(
            "value must have the batch size and number of positions of key, got key "
            f"{tuple(key.shape)} and value {tuple(value.shape)}"
        )
    value_split = _check_value_split(value_split, value)
    choice = _resolve(query, key, value, backend, value_split, chunk_size)
    out, ran = _attend(query, key, value, choice.backend, chunk_size, scale, choice.value_split,
                       choice.kernel, choice.chunked_backward)  # fmt: skip
    record_backend(ran)
    return out

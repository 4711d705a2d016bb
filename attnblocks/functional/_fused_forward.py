"""A fused kernel's forward with the chunked backend's backward: PAM training on tensor cores
within the precision contract.

Under mixed precision the fused kernels cannot run PAM's backward as the contract wants:
they round ``dQ``/``dK`` to the low dtype and take the softmax correction from the rounded
output (``_sdpa.py``), so ``"sdpa"`` trains with its kernel in float32. Their *forward* on
the split low-precision queries and keys holds the contract, and it returns what a
backward needs besides the inputs: each query row's log-sum-exp. So this path runs

- forward: the fused kernel (any plan of ``_sdpa.py``, split queries/keys, low-precision
  values) through torch's kernel operator that also returns the log-sum-exp;
- backward: :func:`~attnblocks.functional._chunked.backward_from_log_sum_exp`, which
  recomputes each chunk's probabilities from that log-sum-exp in float32 and holds the
  contract exactly as ``"chunked"`` does (its own forward is the part replaced).

It is one of the candidates ``"auto"`` times for training calls on CUDA
(``_autotune.py``); :func:`chunked_backward` forces it onto ``"sdpa"`` calls, for tests
and benchmarks. The operators are torch's private ``aten._scaled_dot_product_*``
functions, the ones ``scaled_dot_product_attention`` itself calls; each plan's
log-sum-exp and output are checked once per device and dtype against a float32
recomputation, on inputs laid out as the real calls are, and a plan that disagrees
(another layout or base in some torch) is not used this way.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from ._backends import needs_grad
from ._chunked import backward_from_log_sum_exp, resolve_chunk_size
from ._precision import autocast_disabled
from ._sdpa import (
    _FUSED_DTYPES,
    KernelPlan,
    accepted_plans,
    kernel_inputs,
    kernel_operands,
    merge_parts,
    record_plan,
    sdpa_kernel,
)

#: Query/key positions of the one-time check of a plan, and its log-sum-exp tolerance
#: relative to the largest log-sum-exp.
CHECK_POSITIONS = 16
CHECK_TOLERANCE = 1e-3
_AGREES: dict[tuple, bool] = {}  # (device, dtype, plan) -> whether its check passed
_forced = threading.local()


@contextlib.contextmanager
def chunked_backward(enabled: bool = True) -> Iterator[None]:
    """Inside the block (this thread), ``"sdpa"`` calls that need gradients run the fused
    forward with the chunked backward. For tests and benchmarks; ``"auto"`` picks it by
    measurement.

    Args:
        enabled: whether to force it (False restores the fused backward inside an outer block).
    """
    previous = getattr(_forced, "enabled", False)
    _forced.enabled = enabled
    try:
        yield
    finally:
        _forced.enabled = previous


def chunked_backward_forced() -> bool:
    """Whether an enclosing :func:`chunked_backward` block forces the path in this thread
    (never while ``torch.compile`` traces: a compiled graph runs the plain fused kernels)."""
    return not torch.compiler.is_compiling() and getattr(_forced, "enabled", False)


def _kernel_with_log_sum_exp(
    kernel: str, query: Tensor, key: Tensor, value: Tensor
) -> tuple[Tensor, Tensor]:
    """torch's ``kernel`` operator on ``(B, heads, N, width)`` inputs, scale 1: the output
    and the log-sum-exp of the heads' score rows, ``(B, heads, N_q)`` in float32."""
    aten, positions = torch.ops.aten, query.shape[2]
    with autocast_disabled(query.device):
        if query.device.type == "cpu":
            out, lse = aten._scaled_dot_product_flash_attention_for_cpu(
                query, key, value, 0.0, False, scale=1.0
            )
        elif kernel == "flash":
            out, lse = aten._scaled_dot_product_flash_attention(
                query, key, value, 0.0, False, False, scale=1.0
            )[:2]
        elif kernel == "efficient":
            out, lse = aten._scaled_dot_product_efficient_attention(
                query, key, value, None, True, 0.0, False, scale=1.0
            )[:2]
        else:  # cudnn
            out, lse = aten._scaled_dot_product_cudnn_attention(
                query, key, value, None, True, 0.0, False, False, scale=1.0
            )[:2]
    # The efficient kernel pads the rows to a multiple of 32, cuDNN adds a unit dimension.
    lse = lse.reshape(*lse.shape[:2], -1)[..., :positions]
    return out, lse


def _kernel_agrees(plan: KernelPlan, like: Tensor) -> bool:
    """Whether ``plan``'s kernel returns the natural log-sum-exp of its score rows as
    ``(B, heads, N_q)`` and the right output, checked once per device, dtype and plan on a
    small random input laid out as the real calls are (:func:`kernel_inputs`: padded,
    queries and keys expanded over the parts), against float32.

    Args:
        plan: the kernel plan.
        like: a kernel input: its device and dtype are checked.
    """
    check_key = (str(like.device), like.dtype, plan)
    agrees = _AGREES.get(check_key)
    if agrees is not None:
        return agrees
    generator = torch.Generator(device=like.device).manual_seed(0)

    def draw(width: int) -> Tensor:  # two images: the batch layout is checked too
        shape = (2, CHECK_POSITIONS, width)
        return torch.randn(shape, generator=generator, device=like.device).to(like.dtype)

    query, key = draw(plan.qk_width), draw(plan.qk_width)
    value = draw(plan.parts * plan.value_width)
    inputs = kernel_inputs(query, key, value, plan)
    try:
        with torch.no_grad():
            out, lse = _kernel_with_log_sum_exp(plan.kernel, *inputs)
    except (RuntimeError, TypeError) as error:  # torch refused it, or another signature
        agrees, reason = False, str(error).splitlines()[0][:200]
    else:
        with autocast_disabled(like.device):  # the reference in float32, also under autocast
            scores = query.float() @ key.float().transpose(1, 2)  # (2, rows, keys)
            expected_lse = scores.logsumexp(dim=-1)[:, None]  # every part: the same rows
            expected_out = scores.softmax(dim=-1) @ value.float()
        lse_error = (lse.float() - expected_lse).abs().max()
        out = merge_parts(out, value.shape[-1]).float()
        out_error = (out - expected_out).abs().max() / expected_out.abs().max()
        out_tolerance = 2e-2 if like.dtype in (torch.float16, torch.bfloat16) else 1e-4
        agrees = bool(lse_error <= CHECK_TOLERANCE * (1 + expected_lse.abs().max()))
        agrees = agrees and bool(out_error <= out_tolerance)
        reason = (f"its log-sum-exp is off by {float(lse_error):.3g}, its output by "
                  f"{float(out_error):.3g} of the largest")  # fmt: skip
    if not agrees:
        warnings.warn(
            f"the fused '{plan.kernel}' kernel's forward cannot serve the chunked backward "
            f"on {like.device.type} ({like.dtype}, {plan}, torch {torch.__version__}): {reason}",
            stacklevel=2,
        )
    _AGREES[check_key] = agrees
    return agrees


class _FusedForwardChunkedBackward(torch.autograd.Function):
    """Fused forward (``kernel_inputs`` prepared by the caller), chunked backward."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        kernel_inputs: tuple[Tensor, Tensor, Tensor],
        plan: KernelPlan,
        chunk_size: int,
    ) -> Tensor:
        out, lse = _kernel_with_log_sum_exp(plan.kernel, *kernel_inputs)
        out = merge_parts(out, value.shape[-1]).to(value.dtype)  # (B, N_q, D_v)
        # Every part (head) shares the queries and keys: one row of statistics serves all.
        log_sum_exp = lse[:, 0].to(query.dtype)  # (B, N_q)
        # The backward reads the output only with a full-precision value path (dO . O);
        # else only its dtype: an empty stand-in lets the padded kernel output go.
        saved_out = out if value.dtype == query.dtype else out.new_empty(0)
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(query, key, value, saved_out, log_sum_exp)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        needs = tuple(ctx.needs_input_grad[:3])
        grads = backward_from_log_sum_exp(
            grad_out, ctx.saved_tensors, ctx.chunk_size, needs, normalise_rows=True
        )
        return (*grads, None, None, None)


def fused_forward_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    value_split: int | None = None,
    kernel: str | None = None,
    chunk_size: int | None = None,
) -> Tensor | None:
    """softmax(q k^T) v with a fused kernel's forward and the chunked backward; None when
    no fused kernel takes the inputs (or none returns a usable log-sum-exp).

    Args:
        query: ``(B, N_q, D)`` in the compute dtype (float32 or float64).
        key: ``(B, N_k, D)`` in the compute dtype.
        value: ``(B, N_k, D_v)`` in the value path's dtype: the compute dtype, or
            float16/bfloat16, in which the kernel then runs on split queries and keys.
        value_split: split the value width into this many equal parts; None: the cheapest
            plan per kernel.
        kernel: only this fused kernel; None: the first whose plan torch accepts.
        chunk_size: query positions per chunk of the backward; None: from
            :data:`~attnblocks.functional.DEFAULT_CHUNK_MEMORY`.

    Returns:
        ``(B, N_q, D_v)`` in the value's dtype, or None.
    """
    if sdpa_kernel is None or query.dtype not in _FUSED_DTYPES:
        return None
    # The kernel's own backward never runs, so its forward-only limits apply (grad False).
    with torch.no_grad():  # the kernel's inputs are constants of the graph (detached)
        operands = [t.detach() for t in kernel_operands(query, key, value, grad=False)]
    if operands[2].dtype != value.dtype:
        # A float16 split that overflowed: the kernel runs in float32, the value path with it
        # (converted again outside no_grad, so that the value's gradient flows).
        value = value.to(operands[2].dtype)
    size = resolve_chunk_size(chunk_size or 0, query, key, value)
    for plan, inputs in accepted_plans(*operands, value_split, kernel):
        if not _kernel_agrees(plan, inputs[0]):
            continue
        try:
            out = _FusedForwardChunkedBackward.apply(query, key, value, inputs, plan, size)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as error:  # a layout or size the small check did not meet
            warnings.warn(
                f"the fused '{plan.kernel}' kernel failed on {tuple(inputs[0].shape)} "
                f"({plan}): {str(error).splitlines()[0][:200]}; trying the next plan",
                stacklevel=2,
            )
            continue
        record_plan(plan)
        return out
    return None


def wants_fused_forward(query: Tensor, key: Tensor, value: Tensor, forced: bool) -> bool:
    """Whether an ``"sdpa"`` call takes this path: forced, with gradients, not while compiling
    (a compiled graph runs the plain fused kernels) or capturing a CUDA graph.

    Args:
        query: the call's queries.
        key: the call's keys.
        value: the call's values.
        forced: whether the path is asked for (a probe's candidate or :func:`chunked_backward`).
    """
    if not forced or not needs_grad(query, key, value) or torch.compiler.is_compiling():
        return False
    # A CUDA graph being captured cannot run the one-time check (it reads data on the host).
    return not (query.is_cuda and torch.cuda.is_current_stream_capturing())

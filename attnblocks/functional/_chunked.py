"""Exact position attention in query chunks, O(N * chunk) memory in forward AND backward.

Rabe & Staats, "Self-attention Does Not Need O(n^2) Memory", 2021,
https://arxiv.org/abs/2112.05682; the backward recomputes each chunk's
probabilities from saved log-sum-exp row statistics, as FlashAttention does
(Dao et al., 2022, https://arxiv.org/abs/2205.14135).

Each query chunk sees every key, so its softmax rows are complete: no online
rescaling is needed, and only ``(B, chunk, N_k)`` score blocks ever exist.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from ._precision import autocast_disabled

#: Bytes the score blocks of one chunk may take when ``chunk_size`` is None.
DEFAULT_CHUNK_MEMORY = 64 * 2**20
_MIN_CHUNK = 16


def chunk_size_for_memory(
    batch: int,
    key_positions: int,
    dtype: torch.dtype,
    memory_bytes: int = DEFAULT_CHUNK_MEMORY,
    *,
    value_dtype: torch.dtype | None = None,
) -> int:
    """The largest query chunk whose live score blocks fit in ``memory_bytes``.

    Backward holds two ``(batch, chunk, key_positions)`` blocks of ``dtype`` at once
    (the probabilities and their gradient), plus one of ``value_dtype`` when the value
    path runs in a lower precision (the rounded probabilities, then their gradient);
    forward holds fewer.

    Args:
        batch: batch size ``B``.
        key_positions: number of key positions ``N_k``.
        dtype: dtype the scores are computed in.
        memory_bytes: memory the score blocks may take.
        value_dtype: dtype of the value-path matmuls; None or ``dtype``: the same.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    row_bytes = 2 * itemsize
    if value_dtype is not None and value_dtype != dtype:
        row_bytes += torch.empty((), dtype=value_dtype).element_size()
    per_query = max(batch, 1) * max(key_positions, 1) * row_bytes
    return max(_MIN_CHUNK, memory_bytes // per_query)


def _chunks(length: int, chunk_size: int) -> Iterator[slice]:
    for start in range(0, length, chunk_size):
        yield slice(start, min(start + chunk_size, length))


class _BlockBuffer:
    """One reusable ``(B, chunk, N_k)`` block of scores, so the loop allocates it once.

    A fresh block per chunk would also leave the previous one alive until its name is
    rebound, doubling the peak. The buffer takes the dtype of ``like``.
    """

    def __init__(
        self, like: Tensor, query_positions: int, key_positions: int, chunk_size: int
    ) -> None:
        self.batch, self.key_positions = like.shape[0], key_positions
        rows = min(chunk_size, query_positions)
        self.storage = like.new_empty(self.batch * rows * key_positions)

    def block(self, rows: slice) -> Tensor:
        """A contiguous ``(B, rows, N_k)`` view of the buffer (the last chunk may be shorter)."""
        count = rows.stop - rows.start
        size = self.batch * count * self.key_positions
        return self.storage[:size].view(self.batch, count, self.key_positions)


def _forward(query: Tensor, key: Tensor, value: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """The output ``(B, N_q, D_v)`` and the rows' log-sum-exp ``(B, N_q)``, chunk by chunk.

    ``query`` and ``key`` share the compute dtype (float32 or float64): energies, softmax,
    its row statistics and, in :func:`backward_from_log_sum_exp`, the score gradients
    ``dS``, ``dQ``, ``dK`` run in it. ``value`` sets the value path's dtype: the compute
    dtype, or float16/bfloat16 for mixed precision, where the probabilities are rounded to
    it for ``P V`` and backward runs ``dV = P^T dO`` and ``dP = dO V^T`` in it, as the naive
    computation under autocast does.
    """
    batch, query_positions, _ = query.shape
    mixed = value.dtype != query.dtype
    out = value.new_empty(batch, query_positions, value.shape[-1])
    log_sum_exp = query.new_empty(batch, query_positions)
    key_t = key.transpose(1, 2)  # (B, D, N_k)
    scores = _BlockBuffer(query, query.shape[1], key.shape[1], chunk_size)
    rounded = _BlockBuffer(value, query.shape[1], key.shape[1], chunk_size) if mixed else None
    # no_grad: eager autograd already runs forward without grad, tracers (torch.export) may not.
    with torch.no_grad(), autocast_disabled(query.device):
        for rows in _chunks(query_positions, chunk_size):
            probs = torch.bmm(query[:, rows], key_t, out=scores.block(rows))  # (B, chunk, N_k)
            row_max = probs.amax(dim=-1, keepdim=True)
            probs.sub_(row_max).exp_()  # unnormalised probabilities, in place
            row_sum = probs.sum(dim=-1, keepdim=True)
            if rounded is not None:
                # Normalise and round to the value dtype in one pass, like bmm's weights.to().
                weights = torch.div(probs, row_sum, out=rounded.block(rows))
                out[:, rows] = torch.bmm(weights, value)
            else:
                out[:, rows] = torch.bmm(probs, value).div_(row_sum)
            log_sum_exp[:, rows] = (row_max + row_sum.log()).squeeze(-1)
    return out, log_sum_exp


def backward_from_log_sum_exp(
    grad_out: Tensor,
    saved: tuple[Tensor, ...],
    chunk_size: int,
    needs: tuple[bool, bool, bool],
    normalise_rows: bool = False,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of query, key and value (None where not needed), recomputing each chunk's
    probabilities from the saved log-sum-exp (the chunked forward's, or a fused kernel's:
    ``_fused_forward.py``).

    Args:
        grad_out: ``(B, N_q, D_v)`` gradient of the output.
        saved: ``(query, key, value, out, log_sum_exp)`` of the forward.
        chunk_size: query positions per chunk.
        needs: whether the query, key and value gradients are wanted.
        normalise_rows: divide each recomputed row of probabilities by its sum, for a
            log-sum-exp that is not the float32 one of these queries and keys (a fused
            kernel's, on split low-precision ones): rows that sum to ``1 + e`` would leave
            ``e`` times the softmax correction in every row of ``dS``, a false key-bias
            gradient. One more pass over each block.
    """
    query, key, value, out, log_sum_exp = saved
    need_query, need_key, need_value = needs
    mixed = value.dtype != query.dtype
    grad_out = grad_out.to(out.dtype)
    # New tensors are contiguous (the inputs may be permuted views: PAM's rearranged maps);
    # bmm into a strided out= is ~300x slower for bfloat16 on CPU.
    grad_query = query.new_empty(query.shape) if need_query else None
    grad_key = key.new_zeros(key.shape) if need_key else None
    # dV sums over every chunk: accumulate in the compute dtype, not in half precision.
    grad_value = query.new_zeros(value.shape) if need_value else None
    value_part = value.new_empty(value.shape) if need_value and mixed else None
    key_t, value_t = key.transpose(1, 2), value.transpose(1, 2)
    probs_buffer = _BlockBuffer(query, query.shape[1], key.shape[1], chunk_size)
    grad_scores_buffer = _BlockBuffer(query, query.shape[1], key.shape[1], chunk_size)
    rounded = _BlockBuffer(value, query.shape[1], key.shape[1], chunk_size) if mixed else None
    with torch.no_grad(), autocast_disabled(query.device):
        for rows in _chunks(query.shape[1], chunk_size):
            probs = torch.bmm(query[:, rows], key_t, out=probs_buffer.block(rows))  # scores...
            probs.sub_(log_sum_exp[:, rows, None]).exp_()  # ... recomputed into P in place
            if normalise_rows:
                probs.div_(probs.sum(dim=-1, keepdim=True))
            grad_out_rows = grad_out[:, rows]
            if value_part is not None:
                probs_rounded = rounded.block(rows).copy_(probs)  # P as the forward used it
                grad_value += torch.bmm(
                    probs_rounded.transpose(1, 2), grad_out_rows, out=value_part
                )
            elif need_value:
                grad_value.baddbmm_(probs.transpose(1, 2), grad_out_rows)  # dV += P^T dO
            if not (need_query or need_key):
                continue
            grad_scores = grad_scores_buffer.block(rows)
            if rounded is not None:
                # dS = P * dP - P * delta with delta = sum_j P_ij dP_ij taken from the rounded
                # dP itself: then each row of dS sums to 0 as it must. delta = dO . O (below)
                # would differ from it by O's and dP's rounding, and that error, spread over
                # the row, leaks the keys' mean into dQ and a false gradient into a key bias.
                grad_probs = torch.bmm(grad_out_rows, value_t, out=rounded.block(rows))
                torch.mul(probs, grad_probs, out=grad_scores)  # P * dP, in the compute dtype
                delta = grad_scores.sum(dim=-1, keepdim=True)  # (B, chunk, 1)
                grad_scores.addcmul_(probs, delta, value=-1)
            else:
                # Row-wise dO . O = sum_j P_ij dP_ij: the softmax backward's correction term.
                delta = (grad_out_rows * out[:, rows]).sum(dim=-1, keepdim=True)  # (B, chunk, 1)
                torch.bmm(grad_out_rows, value_t, out=grad_scores).sub_(delta)
                grad_scores.mul_(probs)  # dS = P * (dP - delta), from dP = dO V^T
            if need_query:
                grad_query[:, rows] = torch.bmm(grad_scores, key)  # dQ = dS K
            if need_key:
                grad_key.baddbmm_(grad_scores.transpose(1, 2), query[:, rows])  # dK += dS^T Q
    if grad_value is not None:
        grad_value = grad_value.to(value.dtype)
    return grad_query, grad_key, grad_value


class _ChunkedPositionAttention(torch.autograd.Function):
    """softmax(q k^T) v over query chunks (:func:`_forward` and
    :func:`backward_from_log_sum_exp`), eager."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, query: Tensor, key: Tensor, value: Tensor, chunk_size: int
    ) -> Tensor:
        out, log_sum_exp = _forward(query, key, value, chunk_size)
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(query, key, value, out, log_sum_exp)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        needs = tuple(ctx.needs_input_grad[:3])
        grads = backward_from_log_sum_exp(grad_out, ctx.saved_tensors, ctx.chunk_size, needs)
        return (*grads, None)


# torch.compile: the loop as one opaque operator. Traced inline, its Python loop would unroll
# into one graph per number of chunks, so every new map size would recompile; as an operator
# with a shape-only "fake" version it takes any size in one graph. torch.export still traces
# the loop inline (into standard operators that ONNX knows), for the one size it exports.
_OPERATOR = "attnblocks::chunked_position_attention"


def _empty_if_none(tensor: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0) if tensor is None else tensor  # operators cannot return None


if hasattr(torch.library, "custom_op"):  # torch >= 2.4
    # Explicit schemas: torch 2.4 cannot infer one from this module's string annotations.
    @torch.library.custom_op(
        _OPERATOR,
        mutates_args=(),
        schema="(Tensor query, Tensor key, Tensor value, int chunk_size) -> (Tensor, Tensor)",
    )
    def _chunked_operator(
        query: Tensor, key: Tensor, value: Tensor, chunk_size: int
    ) -> tuple[Tensor, Tensor]:
        return _forward(query, key, value, resolve_chunk_size(chunk_size, query, key, value))

    @_chunked_operator.register_fake
    def _(query: Tensor, key: Tensor, value: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
        batch, query_positions = query.shape[:2]
        return (
            value.new_empty(batch, query_positions, value.shape[-1]),
            query.new_empty(batch, query_positions),
        )

    @torch.library.custom_op(
        _OPERATOR + "_backward",
        mutates_args=(),
        schema="(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor out, "
        "Tensor log_sum_exp, int chunk_size, bool[] needs) -> (Tensor, Tensor, Tensor)",
    )
    def _chunked_backward_operator(
        grad_out: Tensor,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        out: Tensor,
        log_sum_exp: Tensor,
        chunk_size: int,
        needs: list[bool],
    ) -> tuple[Tensor, Tensor, Tensor]:
        chunk_size = resolve_chunk_size(chunk_size, query, key, value)
        saved = (query, key, value, out, log_sum_exp)
        grads = backward_from_log_sum_exp(grad_out, saved, chunk_size, tuple(needs))
        return tuple(_empty_if_none(g, like) for g, like in zip(grads, (query, key, value)))

    @_chunked_backward_operator.register_fake
    def _(grad_out, query, key, value, out, log_sum_exp, chunk_size, needs):
        return tuple(
            like.new_empty(like.shape) if need else like.new_empty(0)
            for need, like in zip(needs, (query, key, value))
        )

    def _setup_context(ctx, inputs, output) -> None:
        query, key, value, chunk_size = inputs
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(query, key, value, *output)

    def _operator_backward(ctx, grad_out: Tensor, grad_log_sum_exp: Tensor):
        needs = [bool(need) for need in ctx.needs_input_grad[:3]]
        grads = _chunked_backward_operator(grad_out, *ctx.saved_tensors, ctx.chunk_size, needs)
        return (*(g if need else None for g, need in zip(grads, needs)), None)

    _chunked_operator.register_autograd(_operator_backward, setup_context=_setup_context)
else:  # pragma: no cover - old torch: compile traces the loop inline
    _chunked_operator = None


def _exporting() -> bool:
    """Whether ``torch.export`` is tracing. The flag it sets is read directly: up to torch
    2.11 at least, ``torch.compiler.is_exporting()`` is True in every ``torch.compile``
    trace too (dynamo folds it to True), which unrolled the loop there."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return flag if flag is not None else getattr(torch.compiler, "is_exporting", lambda: False)()


def resolve_chunk_size(chunk_size: int, query: Tensor, key: Tensor, value: Tensor) -> int:
    """``chunk_size``, or for 0 the one that fits :data:`DEFAULT_CHUNK_MEMORY`."""
    if chunk_size > 0:
        return chunk_size
    return chunk_size_for_memory(query.shape[0], key.shape[1], query.dtype, value_dtype=value.dtype)


def chunked_position_attention(
    query: Tensor, key: Tensor, value: Tensor, chunk_size: int | None
) -> Tensor:
    """softmax(q k^T) v computed chunk by chunk.

    Args:
        query: ``(B, N_q, D)``; its dtype (float32 or float64) is the compute dtype of
            energies, softmax and score gradients.
        key: ``(B, N_k, D)``, same dtype as ``query``.
        value: ``(B, N_k, D_v)``; its dtype is the value path's: the compute dtype, or
            float16/bfloat16 for mixed precision (see :func:`_forward`).
        chunk_size: query positions per chunk; None derives it from
            :data:`DEFAULT_CHUNK_MEMORY`.

    Returns:
        ``(B, N_q, D_v)`` in the value's dtype.
    """
    if torch.compiler.is_compiling() and not _exporting() and _chunked_operator is not None:
        # The chunk size is resolved inside, on concrete sizes: no guard on the map size here.
        return _chunked_operator(query, key, value, chunk_size or 0)[0]
    chunk_size = resolve_chunk_size(chunk_size or 0, query, key, value)
    return _ChunkedPositionAttention.apply(query, key, value, chunk_size)

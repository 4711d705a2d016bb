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
    batch: int, key_positions: int, dtype: torch.dtype, memory_bytes: int = DEFAULT_CHUNK_MEMORY
) -> int:
    """The largest query chunk whose two live score blocks fit in ``memory_bytes``.

    Backward holds two ``(batch, chunk, key_positions)`` blocks at once (the
    probabilities and their gradient); forward holds one.

    Args:
        batch: batch size ``B``.
        key_positions: number of key positions ``N_k``.
        dtype: dtype the scores are computed in.
        memory_bytes: memory the score blocks may take.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_query = 2 * max(batch, 1) * max(key_positions, 1) * itemsize
    return max(_MIN_CHUNK, memory_bytes // per_query)


def _chunks(length: int, chunk_size: int) -> Iterator[slice]:
    for start in range(0, length, chunk_size):
        yield slice(start, min(start + chunk_size, length))


class _BlockBuffer:
    """One reusable ``(B, chunk, N_k)`` block of scores, so the loop allocates it once.

    A fresh block per chunk would also leave the previous one alive until its name is
    rebound, doubling the peak.
    """

    def __init__(self, like: Tensor, key_positions: int, chunk_size: int) -> None:
        self.batch, self.key_positions = like.shape[0], key_positions
        rows = min(chunk_size, like.shape[1])
        self.storage = like.new_empty(self.batch * rows * key_positions)

    def block(self, rows: slice) -> Tensor:
        """A contiguous ``(B, rows, N_k)`` view of the buffer (the last chunk may be shorter)."""
        count = rows.stop - rows.start
        size = self.batch * count * self.key_positions
        return self.storage[:size].view(self.batch, count, self.key_positions)


class _ChunkedPositionAttention(torch.autograd.Function):
    """softmax(q k^T) v over query chunks; all inputs share one dtype (the compute dtype)."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, query: Tensor, key: Tensor, value: Tensor, chunk_size: int
    ) -> Tensor:
        batch, query_positions, _ = query.shape
        out = value.new_empty(batch, query_positions, value.shape[-1])
        log_sum_exp = query.new_empty(batch, query_positions)
        key_t = key.transpose(1, 2)  # (B, D, N_k)
        scores = _BlockBuffer(query, key.shape[1], chunk_size)
        # no_grad: eager autograd already runs forward without grad, tracers (torch.export) may not.
        with torch.no_grad(), autocast_disabled(query.device):
            for rows in _chunks(query_positions, chunk_size):
                probs = torch.bmm(query[:, rows], key_t, out=scores.block(rows))  # (B, chunk, N_k)
                row_max = probs.amax(dim=-1, keepdim=True)
                probs.sub_(row_max).exp_()  # unnormalised probabilities, in place
                row_sum = probs.sum(dim=-1, keepdim=True)
                out[:, rows] = torch.bmm(probs, value).div_(row_sum)
                log_sum_exp[:, rows] = (row_max + row_sum.log()).squeeze(-1)
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(query, key, value, out, log_sum_exp)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        query, key, value, out, log_sum_exp = ctx.saved_tensors
        need_query, need_key, need_value = ctx.needs_input_grad[:3]
        grad_out = grad_out.to(out.dtype)
        grad_query = torch.empty_like(query) if need_query else None
        grad_key = torch.zeros_like(key) if need_key else None
        grad_value = torch.zeros_like(value) if need_value else None
        key_t, value_t = key.transpose(1, 2), value.transpose(1, 2)
        probs_buffer = _BlockBuffer(query, key.shape[1], ctx.chunk_size)
        grad_scores_buffer = _BlockBuffer(query, key.shape[1], ctx.chunk_size)
        with autocast_disabled(query.device):
            for rows in _chunks(query.shape[1], ctx.chunk_size):
                probs = torch.bmm(query[:, rows], key_t, out=probs_buffer.block(rows))  # scores...
                probs.sub_(log_sum_exp[:, rows, None]).exp_()  # ... recomputed into P in place
                grad_out_rows = grad_out[:, rows]
                if need_value:
                    grad_value.baddbmm_(probs.transpose(1, 2), grad_out_rows)  # dV += P^T dO
                if not (need_query or need_key):
                    continue
                # Row-wise dO . O = sum_j P_ij dP_ij: the softmax backward's correction term.
                delta = (grad_out_rows * out[:, rows]).sum(dim=-1, keepdim=True)  # (B, chunk, 1)
                grad_scores = torch.bmm(grad_out_rows, value_t, out=grad_scores_buffer.block(rows))
                grad_scores.sub_(delta).mul_(probs)  # dS = P * (dP - delta), from dP = dO V^T
                if need_query:
                    grad_query[:, rows] = torch.bmm(grad_scores, key)  # dQ = dS K
                if need_key:
                    grad_key.baddbmm_(grad_scores.transpose(1, 2), query[:, rows])  # dK += dS^T Q
        return grad_query, grad_key, grad_value, None


def chunked_position_attention(
    query: Tensor, key: Tensor, value: Tensor, chunk_size: int | None
) -> Tensor:
    """softmax(q k^T) v computed chunk by chunk, in the compute dtype of ``query``.

    Args:
        query: ``(B, N_q, D)``; its dtype is the compute dtype.
        key: ``(B, N_k, D)``, same dtype as ``query``.
        value: ``(B, N_k, D_v)``, cast to the compute dtype here.
        chunk_size: query positions per chunk; None derives it from
            :data:`DEFAULT_CHUNK_MEMORY`.

    Returns:
        ``(B, N_q, D_v)`` in the compute dtype.
    """
    if chunk_size is None:
        chunk_size = chunk_size_for_memory(query.shape[0], key.shape[1], query.dtype)
    return _ChunkedPositionAttention.apply(query, key, value.to(query.dtype), chunk_size)

"""Criss-cross attention, the core of CCNet's block.

Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019,
https://arxiv.org/abs/1811.11721

Every pixel ``(h, w)`` attends to the ``H + W - 1`` pixels of its column and its row,
itself counted once: one softmax over the ``H`` energies of its column (its own entry
masked to ``-inf``) and the ``W`` energies of its row, no ``1/sqrt(d)`` scaling, as in
the official code and mmcv's ``CrissCrossAttention``.

Maps are channel-first, ``(B, C, H, W)``, as the block sees them. Memory is
``O(N (H + W))`` for ``N = H * W`` in forward and backward, never ``N^2``: per batch
element the row probabilities ``(H, W, W)`` and column probabilities ``(W, H, H)``
exist once; backward recomputes them from saved log-sum-exp statistics instead of
keeping them between the passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from .._validation import check_float_tensor
from ._precision import attention_dtype, autocast_disabled

_MAP_AXES = ("B", "C", "H", "W")
#: Bytes a block of transposed values or gradients may take (see ``_blocks``).
_BLOCK_BYTES = 16 * 2**20


def _blocks(length: int, row_bytes: int) -> Iterator[slice]:
    """Slices of ``range(length)`` whose blocks of ``row_bytes`` each stay under the budget."""
    size = max(1, _BLOCK_BYTES // max(row_bytes, 1))
    for start in range(0, length, size):
        yield slice(start, min(start + size, length))


def _probabilities(
    query: Tensor, key: Tensor, log_sum_exp: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Row and column softmax probabilities of one batch element.

    Args:
        query: ``(H, W, D)`` contiguous, in the compute dtype.
        key: ``(H, W, D)`` contiguous, in the compute dtype.
        log_sum_exp: ``(H, W)`` statistics saved by a forward pass; None computes them.

    Returns:
        ``row (H, W, W)``: ``row[h, w, j]`` the weight pixel ``(h, w)`` gives ``(h, j)``;
        ``column (W, H, H)``: ``column[w, h, i]`` the weight it gives ``(i, w)`` (0 for
        ``i == h``); and the ``(H, W)`` log-sum-exp over both.
    """
    row = torch.bmm(query, key.transpose(1, 2))  # (H, W, W) energies
    # Column views of row-major maps: each (H, D) matrix keeps a unit stride, so bmm reads in place.
    column = torch.bmm(query.transpose(0, 1), key.transpose(0, 1).transpose(1, 2))  # (W, H, H)
    own = torch.eye(column.shape[-1], dtype=torch.bool, device=column.device)
    column.masked_fill_(own, float("-inf"))  # a pixel counts once: in its row
    if log_sum_exp is None:
        row_max = torch.maximum(row.amax(dim=-1), column.amax(dim=-1).t())  # (H, W)
        row.sub_(row_max[..., None]).exp_()
        column.sub_(row_max.t()[..., None]).exp_()
        total = row.sum(dim=-1) + column.sum(dim=-1).t()  # (H, W), at least 1
        log_sum_exp = row_max + total.log()
        inverse = total.reciprocal_()
        row.mul_(inverse[..., None])
        column.mul_(inverse.t()[..., None])
    else:  # the same probabilities, from the saved statistics
        row.sub_(log_sum_exp[..., None]).exp_()
        column.sub_(log_sum_exp.t()[..., None]).exp_()
    return row, column, log_sum_exp


def _attend(row: Tensor, column: Tensor, values: Tensor, out: Tensor) -> Tensor:
    """``out[h, w] = sum_j row[h, w, j] values[h, j] + sum_i column[w, h, i] values[i, w]``.

    Args:
        row: ``(H, W, W)`` weights over each row.
        column: ``(W, H, H)`` weights over each column.
        values: ``(H, W, C)`` row-major values (contiguous).
        out: ``(H, W, C)`` contiguous result buffer.
    """
    torch.bmm(row.to(values.dtype), values, out=out)  # all rows at once
    height, width, channels = values.shape
    # Column products land in a small contiguous buffer: bmm writing into strided columns is slow.
    for cols in _blocks(width, height * channels * values.element_size()):
        weights = column[cols].to(values.dtype)  # (w, H, H)
        block = torch.bmm(weights, values[:, cols].transpose(0, 1))  # (w, H, C)
        out[:, cols] += block.transpose(0, 1)
    return out


def _row_major(block: Tensor, dtype: torch.dtype) -> Tensor:
    """A contiguous copy in ``dtype``: bmm copies strided channel-first slices far more slowly."""
    return block.to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)


def _bmm_into(first: Tensor, second: Tensor, out: Tensor) -> None:
    """``out[...] = first @ second``, without a temporary when the dtypes agree."""
    if out.dtype == first.dtype:
        torch.bmm(first, second, out=out)
    else:  # value-path product in half precision, scores kept in float32
        out.copy_(torch.bmm(first, second))


def _value_path_backward(
    row: Tensor,
    column: Tensor,
    values: Tensor,
    grads: Tensor,
    grad_values: Tensor | None,
    grad_row: Tensor | None,
    grad_column: Tensor | None,
) -> None:
    """Gradients of one sample's values and probabilities, into the given buffers.

    Args:
        row: ``(H, W, W)`` and column: ``(W, H, H)`` probabilities.
        values: ``(H, W, C)`` row-major values.
        grads: ``(C, H, W)`` gradient of the attended map (before gamma).
        grad_values: ``(H, W, C)`` buffer for ``dV = P^T dO``, or None.
        grad_row: ``(H, W, W)`` buffer for ``dP = dO V^T`` of the rows, or None.
        grad_column: ``(W, H, H)`` buffer for ``dP`` of the columns, or None.
    """
    dtype = values.dtype
    height, width, channels = values.shape
    # dO in row-major blocks: one transposing copy of a few rows or columns at a time.
    for rows in _blocks(height, width * channels * values.element_size()):
        grad_block = _row_major(rearrange(grads[:, rows], "c h w -> h w c"), dtype)
        if grad_values is not None:
            weights = row[rows].transpose(1, 2).to(dtype)
            torch.bmm(weights, grad_block, out=grad_values[rows])
        if grad_row is not None:
            _bmm_into(grad_block, values[rows].transpose(1, 2), grad_row[rows])
    for cols in _blocks(width, height * channels * values.element_size()):
        grad_block = _row_major(rearrange(grads[:, :, cols], "c h w -> w h c"), dtype)
        if grad_values is not None:
            block = torch.bmm(column[cols].transpose(1, 2).to(dtype), grad_block)  # (w, H, C)
            grad_values[:, cols] += block.transpose(0, 1)
        if grad_column is not None:
            column_values = values[:, cols].transpose(0, 1)  # (w, H, C), unit stride kept
            _bmm_into(grad_block, column_values.transpose(1, 2), grad_column[cols])


class _ScoreGradients(NamedTuple):
    row: Tensor  # (H, W, W) gradient of the row energies
    column: Tensor  # (W, H, H) gradient of the column energies
    gamma: Tensor  # () gradient of gamma from this sample


def _softmax_backward(
    row: Tensor, column: Tensor, grad_row: Tensor, grad_column: Tensor, gamma: Tensor | None
) -> _ScoreGradients:
    """Energy gradients from probabilities and their gradients (before gamma), in place.

    One softmax spans a pixel's row and column, so ``dS = P * (dP - delta)`` with
    ``delta = sum P * dP`` over both parts; ``delta`` is also ``dO . attended`` per pixel,
    which sums to gamma's gradient.
    """
    grad_row.mul_(row)
    grad_column.mul_(column)
    delta = grad_row.sum(dim=-1) + grad_column.sum(dim=-1).t()  # (H, W)
    grad_row.addcmul_(row, delta[..., None], value=-1)
    grad_column.addcmul_(column, delta.t()[..., None], value=-1)
    if gamma is not None:  # the attended map was scaled by gamma
        grad_row.mul_(gamma.to(grad_row.dtype))
        grad_column.mul_(gamma.to(grad_row.dtype))
    return _ScoreGradients(grad_row, grad_column, delta.sum())


def _add_score_gradients(
    scores: _ScoreGradients,
    queries: Tensor,
    keys: Tensor,
    grad_query: Tensor | None,
    grad_key: Tensor | None,
) -> None:
    """``dQ += dS K`` and ``dK += dS^T Q`` over rows and columns of one sample, ``(H, W, D)``."""
    by_column = "h w d -> w h d"  # column views: unit stride kept, bmm reads them in place
    if grad_query is not None:
        grad_query.baddbmm_(scores.row, keys)
        from_columns = torch.bmm(scores.column, rearrange(keys, by_column))
        grad_query += rearrange(from_columns, "w h d -> h w d")
    if grad_key is not None:
        grad_key.baddbmm_(scores.row.transpose(1, 2), queries)
        from_columns = torch.bmm(scores.column.transpose(1, 2), rearrange(queries, by_column))
        grad_key += rearrange(from_columns, "w h d -> h w d")


class _CrissCrossAttention(torch.autograd.Function):
    """``residual + gamma * attended`` (either optional); attention saved as statistics only."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        gamma: Tensor | None,
        residual: Tensor | None,
    ) -> Tensor:
        batch, _, height, width = value.shape
        out_dtype = value.dtype if residual is None else residual.dtype
        # no_grad: eager autograd already runs forward without grad, tracers may not.
        with torch.no_grad(), autocast_disabled(value.device):
            query_rows = rearrange(query, "b d h w -> b h w d").contiguous()
            key_rows = rearrange(key, "b d h w -> b h w d").contiguous()
            value_rows = rearrange(value, "b c h w -> b h w c").contiguous()
            log_sum_exp = query.new_empty(batch, height, width)
            attended = value_rows.new_empty(value_rows.shape[1:])  # (H, W, C), one sample
            out = value.new_empty(value.shape, dtype=out_dtype)
            for b in range(batch):
                row, column, log_sum_exp[b] = _probabilities(query_rows[b], key_rows[b])
                _attend(row, column, value_rows[b], out=attended)
                del row, column  # free before the next sample allocates its own
                maps = rearrange(attended, "h w c -> c h w").to(out_dtype)
                # Written straight into the output: no temporary map per sample.
                if residual is None:
                    torch.mul(maps, 1 if gamma is None else gamma.to(out_dtype), out=out[b])
                elif gamma is None:
                    torch.add(residual[b], maps, out=out[b])
                else:
                    torch.addcmul(residual[b], maps, gamma.to(out_dtype), out=out[b])
        ctx.save_for_backward(query_rows, key_rows, value_rows, log_sum_exp, gamma)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        query_rows, key_rows, value_rows, log_sum_exp, gamma = ctx.saved_tensors
        need_query, need_key, need_value, need_gamma, need_residual = ctx.needs_input_grad
        batch, height, width, channels = value_rows.shape
        value_dtype, compute_dtype = value_rows.dtype, query_rows.dtype
        grad_query = torch.zeros_like(query_rows) if need_query else None
        grad_key = torch.zeros_like(key_rows) if need_key else None
        # dV per sample in row-major layout, handed back channel-first (what the conv expects).
        grad_value_rows = value_rows.new_empty(value_rows.shape[1:]) if need_value else None
        grad_value = value_rows.new_empty(batch, channels, height, width) if need_value else None
        grad_gamma = torch.zeros((), dtype=compute_dtype, device=grad_out.device)
        need_scores = need_query or need_key or need_gamma
        with autocast_disabled(grad_out.device):
            for b in range(batch):
                row, column, _ = _probabilities(query_rows[b], key_rows[b], log_sum_exp[b])
                grad_row = row.new_empty(row.shape) if need_scores else None
                grad_column = column.new_empty(column.shape) if need_scores else None
                _value_path_backward(row, column, value_rows[b], grad_out[b],
                                     grad_value_rows, grad_row, grad_column)  # fmt: skip
                if need_scores:
                    scores = _softmax_backward(row, column, grad_row, grad_column, gamma)
                    grad_gamma += scores.gamma
                    _add_score_gradients(scores, query_rows[b], key_rows[b],
                                         grad_query[b] if need_query else None,
                                         grad_key[b] if need_key else None)  # fmt: skip
                    del scores
                del row, column, grad_row, grad_column  # freed before dV's copy below
                if need_value:  # channel-first: what the value conv's backward reads fastest
                    scale = 1 if gamma is None else gamma.to(value_dtype)
                    channel_first = rearrange(grad_value_rows, "h w c -> c h w")
                    torch.mul(channel_first, scale, out=grad_value[b])
        to_maps = "b h w c -> b c h w"
        return (
            None if grad_query is None else rearrange(grad_query, to_maps),
            None if grad_key is None else rearrange(grad_key, to_maps),
            grad_value,
            grad_gamma.to(gamma.dtype).reshape(gamma.shape) if need_gamma else None,
            grad_out if need_residual else None,
        )


def _check_maps(query: Tensor, key: Tensor, value: Tensor) -> None:
    check_float_tensor("query", query, _MAP_AXES)
    check_float_tensor("key", key, _MAP_AXES)
    check_float_tensor("value", value, _MAP_AXES)
    if query.shape != key.shape:
        raise ValueError(
            f"query and key must have the same shape, got query {tuple(query.shape)} and "
            f"key {tuple(key.shape)}"
        )
    if value.shape[0] != query.shape[0] or value.shape[2:] != query.shape[2:]:
        raise ValueError(
            "value must have the batch size and map size of query, got query "
            f"{tuple(query.shape)} and value {tuple(value.shape)}"
        )
    if query.shape[2] == 0 or query.shape[3] == 0:
        raise ValueError(f"criss-cross attention needs a non-empty map, got {tuple(query.shape)}")


def criss_cross_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    gamma: Tensor | None = None,
    residual: Tensor | None = None,
) -> Tensor:
    """Criss-cross attention: each pixel a weighted sum of the values of its row and column.

    ``out[:, :, h, w] = sum_p a(h, w; p) value[:, :, p]`` over the ``H + W - 1`` pixels
    ``p`` of row ``h`` and column ``w``, ``a`` the softmax of the unscaled energies
    ``query[:, :, h, w] . key[:, :, p]``; then ``residual + gamma * out`` when they are
    given (CCNet's block). Fusing ``gamma`` and ``residual`` here saves keeping the
    attended map for ``gamma``'s gradient.

    Energies and softmax run in at least float32, also under ``torch.autocast``; the
    value path runs in the value's dtype. Memory ``O(B C N + N (H + W))`` in forward
    and backward (first-order gradients only: no double backward).

    Args:
        query: ``(B, D, H, W)`` query maps.
        key: ``(B, D, H, W)`` key maps.
        value: ``(B, C, H, W)`` value maps.
        gamma: optional one-element tensor scaling the attended values.
        residual: optional ``(B, C, H, W)`` maps added to the (scaled) attended values.

    Returns:
        ``(B, C, H, W)`` in the residual's dtype when one is given, else the value's.
    """
    _check_maps(query, key, value)
    if residual is not None:
        check_float_tensor("residual", residual, _MAP_AXES)
        if residual.shape != value.shape:
            raise ValueError(
                f"residual must have the shape of value, got residual {tuple(residual.shape)} "
                f"and value {tuple(value.shape)}"
            )
    if gamma is not None and (not isinstance(gamma, Tensor) or gamma.numel() != 1):
        raise ValueError(f"gamma must be a one-element tensor or None, got {gamma!r}")
    dtype = attention_dtype(torch.promote_types(query.dtype, key.dtype))
    return _CrissCrossAttention.apply(query.to(dtype), key.to(dtype), value, gamma, residual)


@torch.no_grad()
def criss_cross_attention_weights(query: Tensor, key: Tensor) -> Tensor:
    """The criss-cross attention weights of every pixel, for inspection.

    Args:
        query: ``(B, D, H, W)`` query maps.
        key: ``(B, D, H, W)`` key maps.

    Returns:
        ``(B, H, W, H + W)``: for pixel ``(h, w)``, first the weights of the ``H`` pixels
        ``(i, w)`` of its column (the entry ``i = h`` is 0: the pixel counts in its row),
        then those of the ``W`` pixels ``(h, j)`` of its row; each pixel's weights sum
        to 1. In float32 for float16/bfloat16 inputs, in the input dtype otherwise.
    """
    _check_maps(query, key, key)
    dtype = attention_dtype(torch.promote_types(query.dtype, key.dtype))
    query_rows = rearrange(query.to(dtype), "b d h w -> b h w d").contiguous()
    key_rows = rearrange(key.to(dtype), "b d h w -> b h w d").contiguous()
    weights = []
    with autocast_disabled(query.device):
        for b in range(query.shape[0]):
            row, column, _ = _probabilities(query_rows[b], key_rows[b])
            weights.append(torch.cat([column.transpose(0, 1), row], dim=-1))  # (H, W, H + W)
    return torch.stack(weights)

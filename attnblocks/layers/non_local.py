"""NonLocal2d: the non-local block, with mmcv's four pairwise functions.

Wang et al., "Non-local Neural Networks", CVPR 2018, https://arxiv.org/abs/1711.07971

Every position ``i`` receives ``y_i = sum_j f(i, j) g(x_j)`` over the key positions
``j`` and the block returns ``x + conv_out(y)``. The modes choose ``f`` as mmcv's
``NonLocal2d`` does (``theta``, ``phi``, ``g``: 1x1 convolutions to
``channels // reduction``):

- ``"embedded_gaussian"``: ``softmax_j(theta_i . phi_j / sqrt(d))`` (``d`` the reduced
  width; no division when ``use_scale=False``);
- ``"gaussian"``: ``softmax_j(x_i . x_j)`` on the raw input, never scaled;
- ``"dot_product"``: ``theta_i . phi_j / N_k``, no softmax;
- ``"concatenation"``: ``ReLU(w . [theta_i; phi_j]) / N_k``.

None of them builds the ``N x N`` matrix unless asked to: the softmax modes run on the
position-attention backends (:func:`attnblocks.functional.position_attention`), the
dot product by associativity (``theta (phi^T g) / N_k``), the concatenation through
sums over the keys sorted by their score (below).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .._validation import check_choice, check_feature_map, check_reduced_channels
from ..functional import POSITION_BACKENDS, position_attention, position_attention_weights
from ..functional._backends import check_backend, check_chunk_size
from ..functional._precision import attention_dtype, autocast_disabled
from ._points import check_points
from ._projection import project_in

NonLocalMode = Literal["embedded_gaussian", "gaussian", "dot_product", "concatenation"]
#: The pairwise functions of :class:`NonLocal2d`, as mmcv names them.
NON_LOCAL_MODES: tuple[str, ...] = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")
_SOFTMAX_MODES = ("embedded_gaussian", "gaussian")
# Prefix sums of the concatenation mode accumulate in float64: a_i * S + T cancels otherwise.
_ACCUMULATE = torch.float64


def _tokens(maps: Tensor) -> Tensor:
    return rearrange(maps, "b c h w -> b (h w) c")


def _dot_product_attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """``(query @ key^T / N_k) @ value`` as ``query @ (key^T @ value / N_k)``: no N x N matrix.

    Args:
        query: ``(B, N, D)``; key: ``(B, N_k, D)``; value: ``(B, N_k, D_v)``.

    Returns:
        ``(B, N, D_v)`` in at least float32 (its scale is the cube of the input's).
    """
    dtype = attention_dtype(torch.promote_types(query.dtype, value.dtype))
    with autocast_disabled(query.device):
        context = torch.bmm(key.to(dtype).transpose(1, 2), value.to(dtype))  # (B, D, D_v)
        context = context / key.shape[1]
        return torch.bmm(query.to(dtype), context)


def _keys_below(queries: Tensor, keys: Tensor) -> Tensor:
    """For each query ``a_i``, the number of keys ``c_j < a_i``: ``(B, N)`` integers.

    One sort of queries and keys together: what ``searchsorted`` does, in ops that ONNX
    has. A key equal to a query may count or not; its term is ``ReLU(0) = 0`` either way.
    """
    merged = torch.cat([queries, keys], dim=1)  # (B, N + N_k)
    is_key = torch.cat([torch.zeros_like(queries), torch.ones_like(keys)], dim=1).long()
    order = merged.argsort(dim=1)
    keys_so_far = is_key.gather(1, order).cumsum(dim=1)  # keys up to each sorted position
    counts = torch.zeros_like(keys_so_far).scatter(1, order, keys_so_far)
    return counts[:, : queries.shape[1]]


def _concatenation_attention(query_score: Tensor, key_score: Tensor, value: Tensor) -> Tensor:
    """``y_i = sum_j ReLU(a_i + b_j) v_j / N_k`` exactly, in ``O((N + N_k) D_v)`` memory.

    With the keys sorted by ``b`` (descending), the keys that query ``i`` sees are a
    prefix: those with ``b_j > -a_i``. So ``y_i = (a_i S_k + T_k) / N_k`` with prefix sums
    ``S_k = sum_{j<k} v_j`` and ``T_k = sum_{j<k} b_j v_j`` at that prefix's length ``k``,
    counted by one sort. Gradients flow through the sums and gathers.

    Args:
        query_score: ``(B, N)`` scores ``a_i = w_theta . theta_i``.
        key_score: ``(B, N_k)`` scores ``b_j = w_phi . phi_j``.
        value: ``(B, N_k, D_v)`` values.

    Returns:
        ``(B, N, D_v)`` in at least float32.
    """
    keys = key_score.shape[1]
    order = key_score.argsort(dim=1, descending=True)  # (B, N_k)
    sorted_score = key_score.gather(1, order)
    sorted_value = value.gather(1, order[..., None].expand_as(value)).to(_ACCUMULATE)
    sums = torch.cumsum(sorted_value, dim=1)  # S_1 .. S_Nk
    weighted_sums = torch.cumsum(sorted_score[..., None].to(_ACCUMULATE) * sorted_value, dim=1)
    sums, weighted_sums = F.pad(sums, (0, 0, 1, 0)), F.pad(weighted_sums, (0, 0, 1, 0))  # S_0 = 0
    seen = _keys_below(query_score.detach(), -key_score.detach())  # (B, N) prefix lengths
    seen = seen[..., None].expand(-1, -1, value.shape[-1])
    attended = query_score[..., None].to(_ACCUMULATE) * sums.gather(1, seen)
    attended = attended + weighted_sums.gather(1, seen)
    dtype = attention_dtype(torch.promote_types(query_score.dtype, value.dtype))
    return (attended / keys).to(dtype)


class NonLocal2d(nn.Module):
    """The non-local block ``x + conv_out(y)``, ``y_i = sum_j f(i, j) g(x_j)``.

    The pairwise function ``f`` is one of mmcv's four (see the module docstring), with
    mmcv's semantics and parameters: ``g``, ``theta``, ``phi`` (not in ``"gaussian"``),
    ``concat_project`` (``"concatenation"`` only: a bias-free 1x1 conv from the
    concatenated ``[theta; phi]``) and ``conv_out``. With ``sub_sample``, ``g`` and
    ``phi`` (in ``"gaussian"`` the raw keys) are 2x2 max-pooled after their convolution,
    as mmcv does; odd maps lose their last row or column there (floor).

    Every mode trains (mmcv's ``"concatenation"`` cannot: it divides a ReLU output in
    place) and none needs ``N x N`` memory with the default backend. Softmax energies
    run in at least float32, also under ``torch.autocast``; the output has the input's
    dtype. State dict: ``g.weight``, ``g.bias``, ``theta.*``, ``phi.*``,
    ``concat_project.weight``, ``conv_out.weight``/``bias`` (with ``norm_layer``:
    ``conv_out.conv.weight`` and ``conv_out.norm.*``); mmcv's keys map onto these by
    dropping its ``ConvModule`` level (``g.conv.weight`` -> ``g.weight``; ``g.0.conv`` ->
    ``g`` with ``sub_sample``).

    Shapes: ``(B, C, H, W) -> (B, C, H, W)`` for any ``B, H, W``.

    Args:
        channels: input and output channels ``C``.
        reduction: ``theta``, ``phi`` and ``g`` have ``channels // reduction`` channels.
        mode: the pairwise function, one of :data:`NON_LOCAL_MODES`.
        sub_sample: 2x2 max-pool the keys and values (4x fewer key positions).
        use_scale: divide the energies by ``sqrt(channels // reduction)``
            (``"embedded_gaussian"`` only, as in mmcv).
        backend: position-attention backend of the softmax modes, one of
            :data:`attnblocks.functional.POSITION_BACKENDS`.
        chunk_size: query positions per chunk of the ``"chunked"`` backend (None: its choice).
        norm_layer: optional norm after ``conv_out``'s convolution, called as
            ``norm_layer(channels, device=..., dtype=...)`` (mmseg's NLHead uses BatchNorm).
        zero_init_last: start ``conv_out`` (its norm's scale, when there is one) at zero,
            so the block starts as the identity (mmcv's default), through
            :meth:`zero_init_last`, which timm's models call again after re-initialising
            their convolutions.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 2,
        mode: NonLocalMode = "embedded_gaussian",
        sub_sample: bool = False,
        use_scale: bool = True,
        backend: str = "auto",
        chunk_size: int | None = None,
        norm_layer: Callable[..., nn.Module] | None = None,
        zero_init_last: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.inter_channels = inter = check_reduced_channels(channels, reduction)
        self.channels = channels
        self.mode = check_choice("non-local mode", mode, NON_LOCAL_MODES)
        self.sub_sample = bool(sub_sample)
        self.use_scale = bool(use_scale)
        self.backend = check_backend(backend, POSITION_BACKENDS)
        self.chunk_size = check_chunk_size(chunk_size)
        self.g = nn.Conv2d(channels, inter, kernel_size=1, **dd)
        if mode != "gaussian":
            self.theta = nn.Conv2d(channels, inter, kernel_size=1, **dd)
            self.phi = nn.Conv2d(channels, inter, kernel_size=1, **dd)
        if mode == "concatenation":
            self.concat_project = nn.Conv2d(2 * inter, 1, kernel_size=1, bias=False, **dd)
        if norm_layer is None:
            self.conv_out = nn.Conv2d(inter, channels, kernel_size=1, **dd)
        else:
            conv = nn.Conv2d(inter, channels, kernel_size=1, bias=False, **dd)
            self.conv_out = nn.Sequential(OrderedDict(conv=conv, norm=norm_layer(channels, **dd)))
        self.reset_parameters(zero_init_last)

    @torch.no_grad()
    def reset_parameters(self, zero_init_last: bool = True) -> None:
        """mmcv's initialisation: N(0, 0.01) projections, ``conv_out`` zero when asked.

        Args:
            zero_init_last: zero ``conv_out`` (or its norm's scale and shift) with
                :meth:`zero_init_last`; False draws ``conv_out`` from N(0, 0.01) (a norm
                keeps its own init).
        """
        for name in ("g", "theta", "phi"):
            if hasattr(self, name):
                nn.init.normal_(getattr(self, name).weight, std=0.01)
                nn.init.zeros_(getattr(self, name).bias)
        if self.mode == "concatenation":
            nn.init.kaiming_normal_(self.concat_project.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_last:
            self.zero_init_last()
        elif isinstance(self.conv_out, nn.Conv2d):
            nn.init.normal_(self.conv_out.weight, std=0.01)
            nn.init.zeros_(self.conv_out.bias)

    @torch.no_grad()
    def zero_init_last(self) -> None:
        """Zero the last layer (``conv_out``, or its norm's scale and shift): the block is x.

        timm's protocol: a timm model re-initialises every ``Conv2d`` after building
        (``conv_out`` included), then calls ``zero_init_last()`` on every module that has
        it (with its ``zero_init_last=True``, the default), so a block built through
        ``block_args=dict(attn_layer=NonLocal2d)`` starts as the identity there too.
        """
        last = self.conv_out if isinstance(self.conv_out, nn.Conv2d) else self.conv_out.norm
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def _pool(self, maps: Tensor) -> Tensor:
        if not self.sub_sample:
            return maps
        if min(maps.shape[-2:]) < 2:
            raise ValueError(
                "NonLocal2d with sub_sample=True needs maps of at least 2 x 2 (2x2 max-pool), "
                f"got {maps.shape[-2]} x {maps.shape[-1]}"
            )
        return F.max_pool2d(maps, kernel_size=2)

    def _queries_keys(self, x: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Query tokens ``(B, N, D)``, key tokens ``(B, N_k, D)`` and the key map's size.

        The raw input in ``"gaussian"``, ``theta`` and ``phi`` (in at least float32)
        otherwise.
        """
        if self.mode == "gaussian":
            query, key = x, self._pool(x)
        else:
            dtype = attention_dtype(x.dtype)
            query = project_in(self.theta, x, dtype)
            key = self._pool(project_in(self.phi, x, dtype))
        return _tokens(query), _tokens(key), tuple(key.shape[-2:])

    def _scale(self) -> float | None:
        if self.mode == "embedded_gaussian" and self.use_scale:
            return self.inter_channels**-0.5
        return None

    def _concatenation_scores(self, query: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
        """``a = w_theta . theta_i`` ``(B, N)`` and ``b = w_phi . phi_j`` ``(B, N_k)``."""
        weight = self.concat_project.weight.flatten().to(query.dtype)  # [w_theta; w_phi]
        w_theta, w_phi = weight[: self.inter_channels], weight[self.inter_channels :]
        return query @ w_theta, key @ w_phi

    def forward(self, x: Tensor) -> Tensor:
        """Apply the non-local block to ``x`` of shape ``(B, C, H, W)``."""
        check_feature_map(x, self.channels, type(self).__name__)
        height, width = x.shape[-2:]
        query, key, _ = self._queries_keys(x)
        value = _tokens(self._pool(self.g(x)))  # (B, N_k, C // reduction)
        if self.mode in _SOFTMAX_MODES:
            y = position_attention(
                query, key, value, backend=self.backend, chunk_size=self.chunk_size,
                scale=self._scale(),
            )  # fmt: skip
        elif self.mode == "dot_product":
            y = _dot_product_attention(query, key, value)
        else:
            y = _concatenation_attention(*self._concatenation_scores(query, key), value)
        y = rearrange(y, "b (h w) c -> b c h w", h=height, w=width)
        if self.mode in _SOFTMAX_MODES:  # y averages g: as safe in half precision as g
            return x + self.conv_out(y).to(x.dtype)
        # Products of three projections (cubic in x) can pass float16's range: no autocast.
        with autocast_disabled(x.device):
            return x + self.conv_out(y.to(self._conv_out_dtype())).to(x.dtype)

    def _conv_out_dtype(self) -> torch.dtype:
        """The dtype of ``conv_out``'s parameters."""
        return next(self.conv_out.parameters()).dtype

    @torch.no_grad()
    def attention_map(self, x: Tensor, points: Sequence[tuple[int, int]] | Tensor) -> Tensor:
        """The pairwise weights ``f(i, j)`` of selected query pixels over the key map.

        Only the chosen queries' rows are computed, never the ``N x N`` matrix. In the
        softmax modes each map sums to 1; in ``"dot_product"`` and ``"concatenation"``
        they are the raw weights (divided by ``N_k``), which need not.

        Args:
            x: ``(B, C, H, W)`` input feature map.
            points: ``P`` query pixels as ``(row, col)`` pairs, a sequence or a
                ``(P, 2)`` integer tensor.

        Returns:
            ``(B, P, H_k, W_k)`` maps over the key positions (``H // 2, W // 2`` with
            ``sub_sample``), in at least float32.
        """
        check_feature_map(x, self.channels, type(self).__name__)
        height, width = x.shape[-2:]
        rows, cols = check_points(points, height, width, x.device)
        query, key, (key_height, key_width) = self._queries_keys(x)
        chosen = query[:, rows * width + cols]  # (B, P, D)
        if self.mode in _SOFTMAX_MODES:
            weights = position_attention_weights(chosen, key, scale=self._scale())
        else:
            dtype = attention_dtype(torch.promote_types(chosen.dtype, key.dtype))
            chosen, key = chosen.to(dtype), key.to(dtype)
            if self.mode == "dot_product":
                weights = chosen @ key.transpose(1, 2)
            else:
                query_score, key_score = self._concatenation_scores(chosen, key)
                weights = F.relu(query_score[..., None] + key_score[:, None])
            weights = weights / key.shape[1]
        return rearrange(weights, "b p (h w) -> b p h w", h=key_height, w=key_width)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, inter_channels={self.inter_channels}, "
            f"mode={self.mode!r}, sub_sample={self.sub_sample}, use_scale={self.use_scale}, "
            f"backend={self.backend!r}"
        )

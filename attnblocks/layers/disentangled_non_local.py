"""DisentangledNonLocal2d: DNLNet's block, a whitened pairwise term plus a unary term.

Yin et al., "Disentangled Non-Local Neural Networks", ECCV 2020,
https://arxiv.org/abs/2006.06668

The non-local block's attention ``softmax_j(theta_i . phi_j)`` mixes two things: how
pixel ``i`` relates to pixel ``j`` (pairwise) and how salient ``j`` is on its own
(unary). DNL separates them:

- pairwise: ``softmax_j((theta_i - mean(theta)) . (phi_j - mean(phi)) * s / T)``, the
  queries and keys whitened (their mean over positions removed), ``s = 1 / sqrt(d)``
  with ``use_scale`` (else 1) and the temperature ``T`` (0.05: sharp weights);
- unary: ``softmax_j(conv_mask(x)_j)``, one weight per position, the same for every
  pixel (GCNet's attention pooling);

and returns ``x + conv_out(y_pair + y_unary)``, both terms averaging the same values
``g(x)`` and passing together through ``conv_out`` (with mmseg's ``norm_cfg``: its
convolution and norm), as mmsegmentation's ``dnl_head.py`` computes.

The pairwise term runs on the position-attention backends
(:func:`attnblocks.functional.position_attention`, with ``scale = s / T``), so the
default backend never builds the ``N x N`` matrix; the unary term is one weighted sum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from .._validation import check_choice, check_feature_map
from ..functional import position_attention, position_attention_weights
from ..functional._precision import attention_dtype, autocast_disabled
from ._points import check_points
from ._projection import project_in
from .non_local import NonLocal2d, _dot_product_attention, _tokens

DisentangledMode = Literal["embedded_gaussian", "dot_product"]
#: The pairwise functions of :class:`DisentangledNonLocal2d` (those mmseg's DNLHead documents).
DISENTANGLED_MODES: tuple[str, ...] = ("embedded_gaussian", "dot_product")
MapTerm = Literal["pairwise", "unary", "sum"]
#: What :meth:`DisentangledNonLocal2d.attention_map` can draw.
MAP_TERMS: tuple[str, ...] = ("pairwise", "unary", "sum")


def _whitened(tokens: Tensor) -> Tensor:
    """``(B, N, D)`` tokens minus their mean over the ``N`` positions."""
    return tokens - tokens.mean(dim=1, keepdim=True)


class DisentangledNonLocal2d(NonLocal2d):
    """DNLNet's block ``x + conv_out(y_pair + y_unary)`` (see the module docstring).

    A :class:`~attnblocks.NonLocal2d` (same ``g``, ``theta``, ``phi`` and ``conv_out``,
    same backends and precision rule) with whitened queries and keys, a temperature,
    and the unary branch ``conv_mask`` (a 1x1 convolution to one channel, with bias).
    State dict: ``g.*``, ``theta.*``, ``phi.*``, ``conv_mask.*``, ``conv_out.*`` (with
    ``norm_layer``: ``conv_out.conv.weight`` and ``conv_out.norm.*``); mmseg's
    ``dnl_block`` keys map onto these by dropping its ``ConvModule`` level
    (``g.conv.weight`` -> ``g.weight``, ``conv_out.bn`` -> ``conv_out.norm``).

    The modes are the two mmseg's DNLHead documents: ``"embedded_gaussian"`` (the
    softmax above) and ``"dot_product"`` (``(theta_i - mean) . (phi_j - mean) / N``, no
    softmax, no temperature, as mmcv's dot product on whitened inputs). ``conv_out``
    (its norm's scale and shift, with ``norm_layer``) starts at zero, as in mmcv, so the
    block starts as the identity; :meth:`zero_init_last` does it again after an
    outside initialisation (timm's ``attn_layer`` protocol). mmseg's block cannot
    sub-sample (its unary term would not fit the pooled values), so this one has no
    ``sub_sample``.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)`` for any ``B, H, W``.

    Args:
        channels: input and output channels ``C``.
        reduction: ``theta``, ``phi`` and ``g`` have ``channels // reduction`` channels.
        temperature: divides the pairwise energies (``"embedded_gaussian"``); DNLNet: 0.05.
        use_scale: also divide them by ``sqrt(channels // reduction)``
            (``"embedded_gaussian"`` only, as in mmseg).
        mode: the pairwise function, one of :data:`DISENTANGLED_MODES`.
        backend: position-attention backend of the pairwise softmax, one of
            :data:`attnblocks.functional.POSITION_BACKENDS`.
        chunk_size: query positions per chunk of the ``"chunked"`` backend (None: its choice).
        norm_layer: optional norm after ``conv_out``'s convolution, called as
            ``norm_layer(channels, device=..., dtype=...)`` (mmseg's DNLHead uses BatchNorm).
        zero_init_last: start ``conv_out`` (its norm, when there is one) at zero.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 2,
        temperature: float = 0.05,
        use_scale: bool = True,
        mode: DisentangledMode = "embedded_gaussian",
        backend: str = "auto",
        chunk_size: int | None = None,
        norm_layer: Callable[..., nn.Module] | None = None,
        zero_init_last: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_choice("disentangled non-local mode", mode, DISENTANGLED_MODES)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        super().__init__(
            channels, reduction, mode, sub_sample=False, use_scale=use_scale, backend=backend,
            chunk_size=chunk_size, norm_layer=norm_layer, zero_init_last=zero_init_last,
            device=device, dtype=dtype,
        )  # fmt: skip
        self.temperature = float(temperature)
        # A plain convolution with PyTorch's default initialisation, as mmseg's.
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1, device=device, dtype=dtype)

    @torch.no_grad()
    def reset_parameters(self, zero_init_last: bool = True) -> None:
        """mmcv's initialisation of the non-local parts, PyTorch's default for ``conv_mask``.

        Args:
            zero_init_last: zero ``conv_out`` (or its norm's scale and shift).
        """
        super().reset_parameters(zero_init_last)
        if hasattr(self, "conv_mask"):  # NonLocal2d.__init__ calls this before conv_mask exists
            self.conv_mask.reset_parameters()

    @torch.no_grad()
    def zero_init_last(self) -> None:
        """Zero ``conv_out`` (its norm's scale and shift, with a norm): the block becomes
        the identity. timm calls this after re-initialising every convolution of a model."""
        last = self.conv_out if isinstance(self.conv_out, nn.Conv2d) else self.conv_out.norm
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def _scale(self) -> float | None:
        """The factor on the pairwise energies: ``s / T`` (see the module docstring)."""
        if self.mode != "embedded_gaussian":
            return None
        return (self.inter_channels**-0.5 if self.use_scale else 1.0) / self.temperature

    def _whitened_queries_keys(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Whitened ``theta`` and ``phi`` tokens ``(B, N, D)``, in at least float32."""
        query, key, _ = self._queries_keys(x)
        return _whitened(query), _whitened(key)

    def _unary_weights(self, x: Tensor) -> Tensor:
        """The unary weights ``(B, 1, N)`` (each row sums to 1), in at least float32."""
        logits = project_in(self.conv_mask, x, attention_dtype(x.dtype))  # (B, 1, H, W)
        return rearrange(logits, "b 1 h w -> b 1 (h w)").softmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the disentangled non-local block to ``x`` of shape ``(B, C, H, W)``."""
        check_feature_map(x, self.channels, type(self).__name__)
        height, width = x.shape[-2:]
        query, key = self._whitened_queries_keys(x)
        value = _tokens(self.g(x))  # (B, N, C // reduction)
        if self.mode == "embedded_gaussian":
            y = position_attention(
                query, key, value, backend=self.backend, chunk_size=self.chunk_size,
                scale=self._scale(),
            )  # fmt: skip
        else:
            y = _dot_product_attention(query, key, value)
        weights = self._unary_weights(x)
        with autocast_disabled(x.device):  # a weighted mean of g, summed in at least float32
            unary = torch.bmm(weights, value.to(weights.dtype))  # (B, 1, C // reduction)
        y = rearrange(y + unary.to(y.dtype), "b (h w) c -> b c h w", h=height, w=width)
        if self.mode == "embedded_gaussian":  # y averages g: as safe in half precision as g
            return x + self.conv_out(y).to(x.dtype)
        # The dot product is cubic in x and can pass float16's range: conv_out without autocast.
        with autocast_disabled(x.device):
            return x + self.conv_out(y.to(self._conv_out_dtype())).to(x.dtype)

    @torch.no_grad()
    def attention_map(
        self, x: Tensor, points: Sequence[tuple[int, int]] | Tensor, term: MapTerm = "pairwise"
    ) -> Tensor:
        """The weights selected query pixels give the positions of ``x``.

        Only the chosen queries' rows are computed, never the ``N x N`` matrix.

        Args:
            x: ``(B, C, H, W)`` input feature map.
            points: ``P`` query pixels as ``(row, col)`` pairs, a sequence or a
                ``(P, 2)`` integer tensor.
            term: ``"pairwise"`` (the whitened term: each map sums to 1 in
                ``"embedded_gaussian"``; raw weights divided by ``N`` in
                ``"dot_product"``), ``"unary"`` (the unary weights, the same map for every
                point, summing to 1) or ``"sum"`` (both: the total weight each value
                ``g_j`` gets).

        Returns:
            ``(B, P, H, W)`` maps, in at least float32.
        """
        check_feature_map(x, self.channels, type(self).__name__)
        check_choice("attention map term", term, MAP_TERMS)
        height, width = x.shape[-2:]
        rows, cols = check_points(points, height, width, x.device)
        unary = None if term == "pairwise" else self._unary_weights(x).expand(-1, len(rows), -1)
        if term == "unary":
            maps = unary
        else:
            query, key = self._whitened_queries_keys(x)
            chosen = query[:, rows * width + cols]  # (B, P, D)
            if self.mode == "embedded_gaussian":
                maps = position_attention_weights(chosen, key, scale=self._scale())
            else:
                maps = chosen @ key.transpose(1, 2) / key.shape[1]
            maps = maps if unary is None else maps + unary
        return rearrange(maps, "b p (h w) -> b p h w", h=height, w=width)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}"

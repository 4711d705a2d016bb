"""SelfAttentionBlock: mmsegmentation's general query/key/value attention block.

The block of ``mmseg/models/utils/self_attention_block.py`` that ANN (AFNB, APNB),
ISANet and OCRNet build on. Its vocabulary is the Transformer's (Vaswani et al.,
"Attention Is All You Need", NeurIPS 2017, https://arxiv.org/abs/1706.03762):

::

    q = query_downsample(query_project(query_feats))   (B, channels, h, w)
    k = key_downsample(key_project(key_feats))         (B, channels, *key grid)
    v = key_downsample(value_project(key_feats))       (B, channels or out_channels, *key grid)
    context = out_project(softmax_j(scale * q_i . k_j) v_j)  -> (B, out_channels, h, w)

Each projection is ``num_convs`` 1x1 convolutions, plain (with a bias) or conv-norm-act;
``scale`` is ``channels ** -0.5`` with ``matmul_norm`` and 1 without. The softmax over
key positions runs on the position-attention backends
(:func:`attnblocks.functional.position_attention`), so the ``N_q x N_k`` matrix is
never built with ``"chunked"`` or ``"sdpa"``. The block returns the context: no
residual, no ``gamma``; the heads that use it add or concatenate their input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from .._validation import check_feature_map, check_float_tensor, check_positive_int
from ..functional import POSITION_BACKENDS, position_attention, position_attention_weights
from ..functional._backends import check_backend, check_chunk_size
from ..functional._precision import attention_dtype, autocast_disabled
from ._points import check_points
from .conv_norm_act import ConvNormAct, LayerFactory


def build_projection(
    in_channels: int,
    out_channels: int,
    num_convs: int,
    with_norm: bool,
    norm_layer: LayerFactory,
    act_layer: LayerFactory,
    **factory: object,
) -> nn.Module:
    """``num_convs`` 1x1 convolutions ``in_channels -> out_channels -> ... -> out_channels``.

    mmseg's ``SelfAttentionBlock.build_project``: plain convolutions with a bias, or
    conv-norm-act units (:class:`ConvNormAct`, mmcv's ``ConvModule``); one of them
    alone, several in an ``nn.Sequential`` (keys ``0.conv.weight``, ``1.norm.bias``...).

    Args:
        in_channels: input channels.
        out_channels: channels of every convolution's output.
        num_convs: number of convolutions.
        with_norm: conv-norm-act units instead of plain convolutions.
        norm_layer: the norm of the conv-norm-act units.
        act_layer: the activation of the conv-norm-act units.
        **factory: ``device`` and ``dtype`` of the parameters.
    """
    widths = [in_channels] + [out_channels] * num_convs
    if with_norm:
        layers = [
            ConvNormAct(a, b, 1, norm_layer=norm_layer, act_layer=act_layer, **factory)
            for a, b in zip(widths, widths[1:])
        ]
    else:
        layers = [nn.Conv2d(a, b, kernel_size=1, **factory) for a, b in zip(widths, widths[1:])]
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def _project_in(module: nn.Module, x: Tensor, dtype: torch.dtype) -> Tensor:
    """Apply a query/key projection with autocast off: in ``dtype`` (at least float32).

    Half-precision parameters (``model.half()``) project in their own dtype; the
    energies are still computed in float32 from the result.
    """
    parameter_dtype = next(module.parameters()).dtype
    with autocast_disabled(x.device):
        if parameter_dtype == dtype:
            return module(x.to(dtype))
        return module(x.to(parameter_dtype)).to(dtype)


def _is_plain_conv(module: nn.Module | None) -> bool:
    return isinstance(module, nn.Conv2d)


class SelfAttentionBlock(nn.Module):
    """mmseg's ``SelfAttentionBlock``: projected queries, keys and values, softmax attention.

    See the module docstring for the computation. The state-dict layout is mmseg's
    with conv-norm-act units named ``conv``/``norm`` where mmcv's ``ConvModule`` says
    ``conv``/``bn``: ``key_project.*``, ``query_project.*``, ``value_project.*`` and,
    with ``with_out``, ``out_project.*``. With ``share_key_query`` the one projection is
    registered under both ``key_project`` and ``query_project``, as in mmseg, so a
    state dict lists it twice and loading one applies the later (``query_project``).

    Initialisation as mmseg's: conv-norm-act convolutions Kaiming (fan-out), norms at
    1 and 0, plain convolutions PyTorch's default, and a plain ``out_project`` zero
    (``zero_init_last``), so that the context starts at zero.

    Queries and keys are projected and compared in at least float32, also under
    ``torch.autocast``; values and the output follow autocast.

    Shapes: ``query_feats (B, query_in_channels, H, W)`` and ``key_feats (B,
    key_in_channels, H_k, W_k)`` -> ``(B, out_channels, h, w)``, ``h, w`` the query
    grid after ``query_downsample`` (``H, W`` without it); any ``B, H, W, H_k, W_k``.

    Args:
        key_in_channels: channels of the key features (keys and values come from them).
        query_in_channels: channels of the query features.
        channels: width of the projected queries and keys (and values with ``with_out``).
        out_channels: channels of the returned context.
        share_key_query: one projection for keys and queries (needs
            ``key_in_channels == query_in_channels``).
        query_downsample: a module applied to the projected queries (e.g. a max-pool);
            it must return a ``(B, C, h, w)`` map.
        key_downsample: a module applied to the projected keys and values; it may
            return a map ``(B, C, H_k', W_k')`` or tokens ``(B, C, N_k)`` (ANN's pyramid).
        key_query_num_convs: 1x1 convolutions in the key and query projections.
        value_out_num_convs: 1x1 convolutions in the value and out projections.
        key_query_norm: conv-norm-act key/query projections (plain convolutions if False).
        value_out_norm: conv-norm-act value/out projections.
        matmul_norm: divide the energies by ``sqrt(channels)``.
        with_out: project the context with ``out_project`` (values then have ``channels``
            channels); without it the values have ``out_channels``.
        norm_layer: the norm of conv-norm-act projections, called as
            ``norm_layer(channels, device=..., dtype=...)``.
        act_layer: the activation of conv-norm-act projections.
        backend: position-attention backend, one of
            :data:`attnblocks.functional.POSITION_BACKENDS`.
        chunk_size: query positions per chunk of the ``"chunked"`` backend (None: its choice).
        zero_init_last: start a plain ``out_project`` at zero, as mmseg does (no effect
            when there is none or it has a norm).
        device: device of the parameters.
        dtype: dtype of the parameters.

    Raises:
        ValueError: for a non-positive width or number of convolutions, unequal key and
            query channels with ``share_key_query``, or a downsample that is not a module.
    """

    def __init__(
        self,
        key_in_channels: int,
        query_in_channels: int,
        channels: int,
        out_channels: int,
        *,
        share_key_query: bool = False,
        query_downsample: nn.Module | None = None,
        key_downsample: nn.Module | None = None,
        key_query_num_convs: int = 1,
        value_out_num_convs: int = 1,
        key_query_norm: bool = True,
        value_out_norm: bool = False,
        matmul_norm: bool = True,
        with_out: bool = True,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        backend: str = "auto",
        chunk_size: int | None = None,
        zero_init_last: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        for name, value in (
            ("key_in_channels", key_in_channels),
            ("query_in_channels", query_in_channels),
            ("channels", channels),
            ("out_channels", out_channels),
            ("key_query_num_convs", key_query_num_convs),
            ("value_out_num_convs", value_out_num_convs),
        ):
            check_positive_int(name, value)
        if share_key_query and key_in_channels != query_in_channels:
            raise ValueError(
                "share_key_query needs key_in_channels == query_in_channels, got "
                f"{key_in_channels} and {query_in_channels}"
            )
        for name, module in (("query_downsample", query_downsample),
                             ("key_downsample", key_downsample)):  # fmt: skip
            if module is not None and not isinstance(module, nn.Module):
                raise ValueError(f"{name} must be an nn.Module or None, got {module!r}")
        self.key_in_channels = key_in_channels
        self.query_in_channels = query_in_channels
        self.channels = channels
        self.out_channels = out_channels
        self.share_key_query = bool(share_key_query)
        self.matmul_norm = bool(matmul_norm)
        self.backend = check_backend(backend, POSITION_BACKENDS)
        self.chunk_size = check_chunk_size(chunk_size)
        layers = {"norm_layer": norm_layer, "act_layer": act_layer, **dd}
        self.key_project = build_projection(
            key_in_channels, channels, key_query_num_convs, key_query_norm, **layers
        )
        if share_key_query:
            self.query_project = self.key_project  # one module, two names: mmseg's layout
        else:
            self.query_project = build_projection(
                query_in_channels, channels, key_query_num_convs, key_query_norm, **layers
            )
        self.value_project = build_projection(
            key_in_channels, channels if with_out else out_channels, value_out_num_convs,
            value_out_norm, **layers,
        )  # fmt: skip
        self.out_project = (
            build_projection(channels, out_channels, value_out_num_convs, value_out_norm, **layers)
            if with_out
            else None
        )
        self.query_downsample = query_downsample
        self.key_downsample = key_downsample
        self.reset_parameters(zero_init_last)

    @torch.no_grad()
    def reset_parameters(self, zero_init_last: bool = True) -> None:
        """mmseg's initialisation (see the class docstring).

        Args:
            zero_init_last: zero a plain ``out_project``.
        """
        for module in self.modules():
            if isinstance(module, ConvNormAct):
                nn.init.kaiming_normal_(module.conv.weight, mode="fan_out", nonlinearity="relu")
                if getattr(module.norm, "weight", None) is not None:
                    nn.init.ones_(module.norm.weight)
                    nn.init.zeros_(module.norm.bias)
            elif isinstance(module, nn.Conv2d) and module.bias is not None:
                module.reset_parameters()  # plain projections: PyTorch's default
        if zero_init_last:
            self.zero_init_last()

    @torch.no_grad()
    def zero_init_last(self) -> None:
        """Zero a plain 1x1 ``out_project`` so that the context starts at zero.

        timm calls this after re-initialising a model's convolutions; mmseg's
        initialisation does the same. An ``out_project`` with a norm, or none, is kept.
        """
        if _is_plain_conv(self.out_project):
            nn.init.zeros_(self.out_project.weight)
            nn.init.zeros_(self.out_project.bias)

    def _scale(self) -> float | None:
        return self.channels**-0.5 if self.matmul_norm else None

    def _check_inputs(self, query_feats: Tensor, key_feats: Tensor | None) -> Tensor:
        """Check both inputs; the key features (the query features when None)."""
        name = type(self).__name__
        check_feature_map(query_feats, self.query_in_channels, f"{name} query")
        if key_feats is None:
            if self.key_in_channels != self.query_in_channels:
                raise ValueError(
                    f"{name} has key_in_channels={self.key_in_channels} != "
                    f"query_in_channels={self.query_in_channels}: pass key_feats"
                )
            return query_feats
        check_feature_map(key_feats, self.key_in_channels, f"{name} key")
        if key_feats.shape[0] != query_feats.shape[0]:
            raise ValueError(
                f"{name} needs query and key features of one batch size, got "
                f"{tuple(query_feats.shape)} and {tuple(key_feats.shape)}"
            )
        return key_feats

    def _queries(self, query_feats: Tensor) -> Tensor:
        """Projected (and downsampled) queries ``(B, channels, h, w)``, at least float32."""
        query = _project_in(self.query_project, query_feats, attention_dtype(query_feats.dtype))
        if self.query_downsample is not None:
            query = self.query_downsample(query)
            check_float_tensor("query_downsample's output", query, ("B", "C", "h", "w"))
        return query

    def _keys(self, key_feats: Tensor) -> Tensor:
        """Projected (and downsampled) keys ``(B, channels, *key grid)``, at least float32."""
        key = _project_in(self.key_project, key_feats, attention_dtype(key_feats.dtype))
        return key if self.key_downsample is None else self.key_downsample(key)

    def forward(self, query_feats: Tensor, key_feats: Tensor | None = None) -> Tensor:
        """The context of ``query_feats`` attending over ``key_feats``.

        Args:
            query_feats: ``(B, query_in_channels, H, W)`` query features.
            key_feats: ``(B, key_in_channels, H_k, W_k)`` key/value features; None uses
                ``query_feats`` (self-attention).

        Returns:
            ``(B, out_channels, h, w)``: ``h, w`` the query grid after ``query_downsample``.
        """
        key_feats = self._check_inputs(query_feats, key_feats)
        query = self._queries(query_feats)
        height, width = query.shape[-2:]
        key = self._keys(key_feats)
        value = self.value_project(key_feats)
        if self.key_downsample is not None:
            value = self.key_downsample(value)
        context = position_attention(
            rearrange(query, "b c h w -> b (h w) c"),
            rearrange(key, "b c ... -> b (...) c"),
            rearrange(value, "b c ... -> b (...) c"),
            backend=self.backend, chunk_size=self.chunk_size, scale=self._scale(),
        )  # fmt: skip
        context = rearrange(context, "b (h w) c -> b c h w", h=height, w=width)
        return context if self.out_project is None else self.out_project(context)

    @torch.no_grad()
    def attention_map(
        self,
        query_feats: Tensor,
        points: Sequence[tuple[int, int]] | Tensor,
        key_feats: Tensor | None = None,
    ) -> Tensor:
        """The softmax weights of selected query pixels over the key positions.

        Only the chosen queries' rows are computed, never the ``N_q x N_k`` matrix.

        Args:
            query_feats: ``(B, query_in_channels, H, W)`` query features.
            points: ``P`` query pixels as ``(row, col)`` pairs on the query grid after
                ``query_downsample``, a sequence or a ``(P, 2)`` integer tensor.
            key_feats: the key features; None uses ``query_feats``.

        Returns:
            ``(B, P, H_k', W_k')`` maps over the (downsampled) key grid, each summing to 1,
            in at least float32; ``(B, P, N_k)`` when ``key_downsample`` returns tokens.
        """
        key_feats = self._check_inputs(query_feats, key_feats)
        query = self._queries(query_feats)
        rows, cols = check_points(points, *query.shape[-2:], query.device)
        chosen = rearrange(query[:, :, rows, cols], "b c p -> b p c")
        key = self._keys(key_feats)
        weights = position_attention_weights(
            chosen, rearrange(key, "b c ... -> b (...) c"), scale=self._scale()
        )
        if key.ndim == 4:
            return rearrange(weights, "b p (h w) -> b p h w", h=key.shape[2], w=key.shape[3])
        return weights

    def extra_repr(self) -> str:
        return (
            f"key_in_channels={self.key_in_channels}, query_in_channels="
            f"{self.query_in_channels}, channels={self.channels}, out_channels="
            f"{self.out_channels}, share_key_query={self.share_key_query}, "
            f"matmul_norm={self.matmul_norm}, backend={self.backend!r}"
        )

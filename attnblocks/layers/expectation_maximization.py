"""ExpectationMaximizationAttention: EMANet's attention over a few bases found by EM.

Li et al., "Expectation-Maximization Attention Networks for Semantic Segmentation",
ICCV 2019, https://arxiv.org/abs/1907.13426

Instead of attending over all ``N`` pixels, EMA explains the ``N`` feature vectors by
``K`` bases ``mu`` (``K = 64`` in EMANet) found by a few steps of expectation
maximisation, and rebuilds every pixel from them:

- E step: responsibilities ``z = softmax_k(x_n . mu_k)`` (over bases);
- M step: ``mu_k = sum_n z_nk x_n / sum_n z_nk``, then L2-normalised over channels;
- reconstruction: ``x~_n = sum_k z_nk mu_k`` with the last step's ``z`` and ``mu``.

As in mmseg's ``EMAModule`` and the authors' code, the EM steps run without gradients
(the reconstruction is a constant for backpropagation; gradients reach the input through
the residual only) and the initial bases are a buffer that training moves towards the
batch's final bases with ``momentum``: their mean over the batch, averaged over the
processes of a ``torch.distributed`` group (all-reduce), L2-normalised, then
``bases = (1 - momentum) * bases + momentum * new``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .._validation import check_feature_map, check_positive_int
from ..functional._precision import attention_dtype, autocast_disabled
from ._inplace import safe_for_inplace
from ._points import check_points
from .conv_norm_act import ConvNormAct, LayerFactory


def distributed_mean(tensor: Tensor) -> Tensor:
    """The mean of ``tensor`` over the processes of the default ``torch.distributed`` group.

    mmseg's ``reduce_mean``: each process divides by the world size, then an all-reduce
    sums. Without an initialised process group, ``tensor`` itself.

    Args:
        tensor: this process's value (same shape on every process).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return tensor


def em_iterations(feats: Tensor, bases: Tensor, num_stages: int) -> tuple[Tensor, Tensor]:
    """EMA's EM steps: responsibilities and bases after ``num_stages`` steps.

    Args:
        feats: ``(B, C, N)`` features.
        bases: ``(B, C, K)`` initial bases.
        num_stages: number of E + M steps (at least 1).

    Returns:
        ``(responsibilities (B, N, K), bases (B, C, K))`` of the last step: each row of
        the responsibilities sums to 1 over the bases; each basis has unit L2 norm.
    """
    for _ in range(num_stages):
        responsibilities = torch.einsum("bcn,bck->bnk", feats, bases).softmax(dim=2)
        # M step: each basis averages the pixels, weighted by their responsibilities (L1 over n).
        weights = F.normalize(responsibilities, dim=1, p=1)
        bases = F.normalize(torch.einsum("bcn,bnk->bck", feats, weights), dim=1, p=2)
    return responsibilities, bases


class ExpectationMaximizationAttention(nn.Module):
    """EMANet's EMA unit: 1x1 conv, EM over ``num_bases`` bases, reconstruction, 1x1 conv-norm.

    ::

        x -> in_conv (1x1, bias; frozen) -> EM (num_stages steps from `bases`)
          -> reconstruction -> ReLU -> out_conv (1x1 conv, norm) -> ReLU(x + that)

    mmseg's ``EMAHead`` between its ``ema_in_conv`` and ``bottleneck``: ``ema_mid_conv``
    (here ``in_conv``; it feeds only the gradient-free EM, so it never receives a
    gradient, and its parameters have ``requires_grad`` False as in mmseg),
    ``ema_module.bases`` (here ``bases``, a buffer ``(1, channels, num_bases)``) and
    ``ema_out_conv`` (here ``out_conv.conv``/``.norm``).
    EM runs in at least float32 with autocast off (its energies are unscaled dot
    products); see the module docstring for the base update in training.

    Channels first, so it builds as a timm ``attn_layer``; it is not an identity at
    initialisation (the final ReLU).

    Shapes: ``(B, channels, H, W)`` -> ``(B, channels, H, W)``, any ``B, H, W``.

    Args:
        channels: input and output channels (mmseg's ``ema_channels``, 512).
        num_bases: number of bases ``K`` (64 in EMANet).
        num_stages: EM steps per forward (3 in EMANet's training).
        momentum: weight of the batch's bases in the training update of ``bases``.
        norm_layer: normalisation after ``out_conv``'s convolution.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    bases: Tensor

    def __init__(
        self,
        channels: int,
        num_bases: int = 64,
        num_stages: int = 3,
        momentum: float = 0.1,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.channels = check_positive_int("channels", channels)
        self.num_bases = check_positive_int("num_bases", num_bases)
        self.num_stages = check_positive_int("num_stages", num_stages)
        if (
            isinstance(momentum, bool)
            or not isinstance(momentum, (int, float))
            or not (0 <= momentum <= 1)
        ):
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        self.in_conv = nn.Conv2d(channels, channels, kernel_size=1, **dd)
        self.in_conv.requires_grad_(False)
        self.out_conv = ConvNormAct(channels, channels, 1, norm_layer=norm_layer,
                                    act_layer=nn.Identity, **dd)  # fmt: skip
        self.register_buffer("bases", torch.empty(1, channels, num_bases, **dd))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """mmseg's initialisation: bases ``N(0, 2 / K)`` L2-normalised over channels, the
        convolutions Kaiming (fan-out), the norm at 1 and 0."""
        self.bases.normal_(0, math.sqrt(2.0 / self.num_bases))
        self.bases.copy_(F.normalize(self.bases, dim=1, p=2))
        for conv in (self.in_conv, self.out_conv.conv):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        norm = self.out_conv.norm
        if getattr(norm, "weight", None) is not None:
            nn.init.ones_(norm.weight)
            nn.init.zeros_(norm.bias)

    def _em(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``in_conv`` then EM: features ``(B, C, N)``, responsibilities, final bases."""
        dtype = attention_dtype(x.dtype)
        with torch.no_grad(), autocast_disabled(x.device):
            weight, bias = self.in_conv.weight, self.in_conv.bias
            feats = F.conv2d(
                x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
            )
            feats = rearrange(feats, "b c h w -> b c (h w)")
            bases = self.bases.to(dtype).expand(x.shape[0], -1, -1)
            responsibilities, bases = em_iterations(feats, bases, self.num_stages)
        return feats, responsibilities, bases

    @torch.no_grad()
    def _update_bases(self, bases: Tensor) -> None:
        """mmseg's training update: batch mean, mean over processes, L2 norm, momentum."""
        new = distributed_mean(bases.mean(dim=0, keepdim=True))
        new = F.normalize(new, dim=1, p=2).to(self.bases.dtype)
        self.bases.copy_((1 - self.momentum) * self.bases + self.momentum * new)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the unit to ``x`` of shape ``(B, channels, H, W)``; in training mode, also
        move :attr:`bases` (all processes of a distributed group must call it together)."""
        check_feature_map(x, self.channels, type(self).__name__)
        height, width = x.shape[-2:]
        _, responsibilities, bases = self._em(x)
        with torch.no_grad(), autocast_disabled(x.device):
            recon = torch.einsum("bck,bnk->bcn", bases, responsibilities)
        recon = rearrange(recon, "b c (h w) -> b c h w", h=height, w=width).to(x.dtype)
        if self.training:
            self._update_bases(bases)
        return safe_for_inplace(F.relu(x + self.out_conv(F.relu(recon))))

    @torch.no_grad()
    def attention_map(self, x: Tensor, points: Sequence[tuple[int, int]] | Tensor) -> Tensor:
        """The responsibilities of selected pixels over the bases (the last E step).

        Args:
            x: ``(B, channels, H, W)`` input feature map.
            points: ``P`` pixels as ``(row, col)`` pairs, a sequence or a ``(P, 2)``
                integer tensor.

        Returns:
            ``(B, P, num_bases)`` weights, each row summing to 1, in at least float32.
        """
        check_feature_map(x, self.channels, type(self).__name__)
        rows, cols = check_points(points, *x.shape[-2:], x.device)
        _, responsibilities, _ = self._em(x)
        return responsibilities[:, rows * x.shape[-1] + cols]

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, num_bases={self.num_bases}, "
            f"num_stages={self.num_stages}, momentum={self.momentum}"
        )

"""CAM: DANet's channel attention module.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from .._validation import check_choice, check_feature_map, check_positive_int
from ..functional._backends import CHANNEL_BACKENDS, ChannelBackend, check_backend
from ..functional.channel import (
    CHANNEL_MODES,
    ChannelMode,
    channel_attention,
    channel_attention_weights,
)


class CAM(nn.Module):
    """Channel attention: each channel map becomes a weighted sum of all channel maps.

    ``out = gamma * (A @ X) + x`` with ``X`` the ``(C, H*W)`` flattened maps and
    ``A`` the ``C x C`` attention from ``E = X X^T``:

    - ``mode="original"`` (default): ``A = softmax(rowmax(E) - E)``, the authors'
      ``CAM_Module``. It equals ``softmax(-E)`` and favours the LEAST similar
      channels; the authors say it helped convergence.
    - ``mode="paper"``: ``A = softmax(E)``, as the paper's equation writes it.

    The only parameter is ``gamma`` (shape ``[1]``, starting at ``gamma_init``), as in
    the authors' module, so their state dict loads unchanged. Energies, softmax and
    the weighted sum run in at least float32 (``E`` sums over all positions and
    overflows float16); the output has the input's dtype.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)`` for any ``B, H, W``.

    Args:
        channels: input and output channels ``C`` (checked against the input).
        backend: attention backend, one of :data:`attnblocks.functional.CHANNEL_BACKENDS`.
        gamma_init: initial value of the learnable residual scale ``gamma``.
        mode: ``"original"`` or ``"paper"``, as above.
        device: device of ``gamma``.
        dtype: dtype of ``gamma``.
    """

    def __init__(
        self,
        channels: int,
        backend: ChannelBackend = "auto",
        gamma_init: float = 0.0,
        mode: ChannelMode = "original",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.backend = check_backend(backend, CHANNEL_BACKENDS)
        self.mode = check_choice("channel attention mode", mode, CHANNEL_MODES)
        self.gamma = nn.Parameter(torch.full((1,), float(gamma_init), device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        """Apply channel attention to ``x`` of shape ``(B, C, H, W)``."""
        if torch.jit.is_scripting():
            return self._scripted_forward(x)
        return self._forward(x)

    def _scripted_forward(self, x: Tensor) -> Tensor:
        """TorchScript's forward: the same computation with plain ops (einops and the
        functional checks are Python that TorchScript cannot compile)."""
        if x.dim() != 4 or x.size(1) != self.channels:
            raise ValueError(
                "CAM was built for (B, " + str(self.channels) + ", H, W) inputs, got shape "
                + str(x.shape)
            )  # fmt: skip
        dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        maps = x.flatten(2).to(dtype)  # (B, C, N)
        energy = torch.bmm(maps, maps.transpose(1, 2))  # (B, C, C)
        if self.mode == "original":
            energy = energy.amax(dim=-1, keepdim=True) - energy  # the authors' softmax(-E)
        attended = torch.bmm(energy.softmax(dim=-1), maps).reshape(x.shape)
        return self.gamma.to(x.dtype) * attended.to(x.dtype) + x

    @torch.jit.unused
    def _forward(self, x: Tensor) -> Tensor:
        check_feature_map(x, self.channels, type(self).__name__)
        height, width = x.shape[-2:]
        maps = rearrange(x, "b c h w -> b c (h w)")
        attended = channel_attention(maps, mode=self.mode, backend=self.backend)
        attended = rearrange(attended, "b c (h w) -> b c h w", h=height, w=width)
        return self.gamma.to(x.dtype) * attended + x

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> Tensor:
        """The ``(B, C, C)`` channel attention matrix for ``x`` (row = output channel).

        Args:
            x: ``(B, C, H, W)`` input feature map.
        """
        check_feature_map(x, self.channels, type(self).__name__)
        return channel_attention_weights(rearrange(x, "b c h w -> b c (h w)"), self.mode)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, mode={self.mode!r}, backend={self.backend!r}"

"""The training loss of DANet: cross-entropy on the fused output and on each branch.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .models.danet_head import DANetOutput


class DANetLoss(nn.Module):
    """``CE(out) + w_pam * CE(pam) + w_cam * CE(cam)``, void pixels ignored.

    The authors weight all three outputs equally (``aux_weights=(1.0, 1.0)``). Each
    cross-entropy is the mean over the scored (not ignored) pixels of the batch; a batch
    in which every pixel is ignored (an ADE20K crop of only "other", say) gives a loss
    of 0 with zero gradients, not NaN.

    Args:
        ignore_index: label of pixels that count nowhere (255 in Cityscapes and VOC).
        aux_weights: weights of the PAM and CAM branch losses.
    """

    def __init__(self, ignore_index: int = 255, aux_weights: Sequence[float] = (1.0, 1.0)) -> None:
        super().__init__()
        weights = tuple(float(w) for w in aux_weights)
        if len(weights) != 2 or any(w < 0 for w in weights):
            raise ValueError(
                f"aux_weights must be two non-negative weights (pam, cam), got {aux_weights!r}"
            )
        self.ignore_index = ignore_index
        self.aux_weights = weights

    def forward(self, outputs: DANetOutput, target: Tensor) -> Tensor:
        """The weighted loss of DANet's three logit maps ``(B, K, H, W)`` against ``target``.

        Args:
            outputs: the model's :class:`DANetOutput` (or any ``(out, pam, cam)`` triple).
            target: ``(B, H, W)`` integer labels, ``ignore_index`` for void pixels.
        """
        out, pam, cam = outputs
        if target.ndim != 3 or target.shape != (out.shape[0], *out.shape[2:]):
            raise ValueError(
                f"target must be (B, H, W) = {(out.shape[0], *out.shape[2:])} labels for "
                f"logits of shape {tuple(out.shape)}, got shape {tuple(target.shape)}"
            )
        # cross_entropy's own mean divides by the scored pixels: 0 / 0 = NaN when there are none.
        scored = (target != self.ignore_index).sum().clamp(min=1)
        loss = self._cross_entropy_sum(out, target) / scored
        for weight, logits in zip(self.aux_weights, (pam, cam)):
            loss = loss + weight * (self._cross_entropy_sum(logits, target) / scored)
        return loss

    def _cross_entropy_sum(self, logits: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy summed over the scored pixels (0 when there are none)."""
        return F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum")

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, aux_weights={self.aux_weights}"

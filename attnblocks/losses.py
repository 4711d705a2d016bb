"""Training losses: DANet's three-branch cross-entropy and the plain one of CCNet.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .models.danet_head import DANetOutput


def _check_target(logits: Tensor, target: Tensor) -> None:
    """Raise a ValueError unless ``target`` is ``(B, H, W)`` for ``(B, K, H, W)`` logits."""
    if target.ndim != 3 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"target must be (B, H, W) = {(logits.shape[0], *logits.shape[2:])} labels for "
            f"logits of shape {tuple(logits.shape)}, got shape {tuple(target.shape)}"
        )


def _scored_pixels(target: Tensor, ignore_index: int) -> Tensor:
    """How many pixels count, at least 1: cross_entropy's own mean is 0 / 0 = NaN without any."""
    return (target != ignore_index).sum().clamp(min=1)


def _cross_entropy_sum(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """Cross-entropy summed over the scored pixels (0 when there are none)."""
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")


class SegmentationCrossEntropy(nn.Module):
    """Cross-entropy of one ``(B, K, H, W)`` logit map, void pixels ignored (CCNet's loss).

    The mean over the scored (not ignored) pixels of the batch, like
    ``nn.CrossEntropyLoss(ignore_index=...)``, except that a batch in which every pixel
    is ignored gives 0 with zero gradients instead of NaN.

    Args:
        ignore_index: label of pixels that count nowhere (255 in Cityscapes and VOC).
    """

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """The loss of ``(B, K, H, W)`` logits against ``(B, H, W)`` integer labels.

        Args:
            logits: class scores, e.g. :class:`~attnblocks.models.CCNet`'s output.
            target: integer labels, ``ignore_index`` for void pixels.
        """
        _check_target(logits, target)
        scored = _scored_pixels(target, self.ignore_index)
        return _cross_entropy_sum(logits, target, self.ignore_index) / scored

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"


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
        _check_target(out, target)
        scored = _scored_pixels(target, self.ignore_index)
        loss = _cross_entropy_sum(out, target, self.ignore_index) / scored
        for weight, logits in zip(self.aux_weights, (pam, cam)):
            loss = loss + weight * (_cross_entropy_sum(logits, target, self.ignore_index) / scored)
        return loss

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, aux_weights={self.aux_weights}"

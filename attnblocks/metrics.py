"""Segmentation metrics from a confusion matrix: per-class IoU, mIoU, pixel accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._validation import check_positive_int


class SegmentationMetrics:
    """Accumulates a ``K x K`` confusion matrix (rows: truth, columns: prediction).

    Pixels labelled ``ignore_index`` are not counted. Classes that appear neither in
    the truth nor in the predictions have an undefined IoU (NaN) and are left out of
    the mean, as the usual Cityscapes/ADE20K evaluation does.

    Args:
        num_classes: number of classes ``K``.
        ignore_index: label of pixels that are not scored.
        device: where the confusion matrix lives (that of the predictions).
    """

    def __init__(
        self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu"
    ) -> None:
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Count a batch of ``(B, H, W)`` predicted labels against the target labels.

        Args:
            prediction: predicted class indices.
            target: true class indices, ``ignore_index`` for void pixels.
        """
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction and target must have one shape, got {tuple(prediction.shape)} "
                f"and {tuple(target.shape)}"
            )
        valid = target != self.ignore_index
        truth, guess = target[valid].long(), prediction[valid].long()
        outside = (
            (truth < 0) | (truth >= self.num_classes) | (guess < 0) | (guess >= self.num_classes)
        )
        if outside.any():
            raise ValueError(
                f"labels must lie in 0..{self.num_classes - 1} (or be {self.ignore_index}); got "
                f"target values {truth[outside].unique().tolist()[:10]} and predictions "
                f"{guess[outside].unique().tolist()[:10]}"
            )
        # Each (truth, prediction) pair as one index of the flattened K x K matrix.
        pairs = truth * self.num_classes + guess
        counts = torch.bincount(pairs, minlength=self.num_classes**2)
        self.confusion += counts.view(self.num_classes, self.num_classes).to(self.confusion.device)

    def per_class_iou(self) -> Tensor:
        """IoU of each class, ``TP / (TP + FP + FN)``; NaN where the class never occurs."""
        confusion = self.confusion.double()
        true_positive = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - true_positive
        return torch.where(union > 0, true_positive / union.clamp(min=1), torch.nan)

    def miou(self) -> float:
        """Mean IoU over the classes that occur."""
        iou = self.per_class_iou()
        present = ~iou.isnan()
        return iou[present].mean().item() if present.any() else math.nan

    def pixel_accuracy(self) -> float:
        """Fraction of scored pixels labelled correctly."""
        total = self.confusion.sum().item()
        return self.confusion.diag().sum().item() / total if total else math.nan

    def summary(self, class_names: Sequence[str] | None = None) -> dict:
        """``{"miou", "pixel_acc", "per_class_iou": {name: iou or None}}``, JSON-ready.

        Args:
            class_names: names of the classes (default: their indices as strings).
        """
        names = list(class_names) if class_names is not None else map(str, range(self.num_classes))
        per_class = {
            name: (None if math.isnan(value) else value)
            for name, value in zip(names, self.per_class_iou().tolist())
        }
        return {"miou": self.miou(), "pixel_acc": self.pixel_accuracy(), "per_class_iou": per_class}

    def all_reduce(self) -> None:
        """Sum the confusion matrices of all processes (torch.distributed, when initialised)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.confusion)

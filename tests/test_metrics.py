"""SegmentationMetrics against IoU and accuracy counted by hand."""

import math

import pytest
import torch

from attnblocks.metrics import SegmentationMetrics


def test_counts_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    prediction = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    metrics = SegmentationMetrics(4)
    metrics.update(prediction[None], target[None])
    # class 0: TP 1, FP 1 (a 2 predicted 0), FN 1 (a 0 predicted 1) -> 1/3
    # class 1: TP 3, FP 1, FN 0 -> 3/4; class 2: TP 1, FN 1 -> 1/2; class 3 never occurs.
    iou = metrics.per_class_iou()
    assert iou[:3].tolist() == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert math.isnan(iou[3])
    assert metrics.miou() == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert metrics.pixel_accuracy() == pytest.approx(5 / 7)  # the 255 pixel is not scored
    summary = metrics.summary(["a", "b", "c", "d"])
    assert summary["per_class_iou"]["d"] is None
    assert summary["miou"] == pytest.approx(metrics.miou())


def test_accumulates_batches():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (4, 5, 6), generator=gen)
    prediction = torch.randint(0, 3, (4, 5, 6), generator=gen)
    whole, parts = SegmentationMetrics(3), SegmentationMetrics(3)
    whole.update(prediction, target)
    for index in range(4):
        parts.update(prediction[index : index + 1], target[index : index + 1])
    assert torch.equal(whole.confusion, parts.confusion)
    assert whole.confusion.sum() == target.numel()


def test_bad_labels_and_shapes():
    metrics = SegmentationMetrics(3)
    with pytest.raises(ValueError, match=r"labels must lie in 0..2.*target values \[7\]"):
        metrics.update(torch.zeros(1, 2, 2), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="prediction and target must have one shape"):
        metrics.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3))

"""DANetLoss and SegmentationCrossEntropy against cross-entropy computed by hand."""

import pytest
import torch

from attnblocks.losses import DANetLoss, SegmentationCrossEntropy
from attnblocks.models import DANetOutput


def manual_cross_entropy(logits, target, ignore_index):
    log_probs = logits.double().log_softmax(dim=1)
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))  # any class index for void
    picked = log_probs.gather(1, safe.unsqueeze(1)).squeeze(1)
    return -(picked[valid]).mean()


def test_weighted_sum_of_three_cross_entropies():
    gen = torch.Generator().manual_seed(0)
    outputs = DANetOutput(*(torch.randn(2, 4, 5, 6, generator=gen) for _ in range(3)))
    target = torch.randint(0, 4, (2, 5, 6), generator=gen)
    target[0, 0] = 255
    expected = sum(
        w * manual_cross_entropy(t, target, 255) for w, t in zip((1.0, 0.3, 0.7), outputs)
    )
    loss = DANetLoss(aux_weights=(0.3, 0.7))(outputs, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    equal = DANetLoss()(outputs, target)
    assert equal.item() == pytest.approx(
        sum(manual_cross_entropy(t, target, 255) for t in outputs).item(), rel=1e-6
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="aux_weights must be two non-negative weights"):
        DANetLoss(aux_weights=(1.0,))
    with pytest.raises(ValueError, match="aux_weights must be two non-negative weights"):
        DANetLoss(aux_weights=(1.0, -1.0))
    outputs = DANetOutput(*(torch.randn(2, 4, 5, 6) for _ in range(3)))
    with pytest.raises(ValueError, match=r"target must be \(B, H, W\)"):
        DANetLoss()(outputs, torch.zeros(2, 5, 7, dtype=torch.long))


def test_a_batch_with_every_pixel_ignored_gives_zero_loss_and_zero_gradients():
    # An ADE20K crop of only "other" pixels: nothing to score, so nothing to learn from.
    outputs = DANetOutput(*(torch.randn(2, 4, 5, 6, requires_grad=True) for _ in range(3)))
    target = torch.full((2, 5, 6), 255)
    loss = DANetLoss()(outputs, target)
    assert loss.item() == 0.0
    loss.backward()
    for logits in outputs:
        assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_mean_over_scored_pixels_matches_cross_entropy_bit_for_bit():
    # Dividing the summed loss by the scored pixels is what cross_entropy's mean does.
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 5, 6, generator=gen)
    target = torch.randint(0, 4, (2, 5, 6), generator=gen)
    target[1, :2] = 255
    loss = DANetLoss(aux_weights=(0.0, 0.0))(DANetOutput(logits, logits, logits), target)
    assert torch.equal(loss, torch.nn.functional.cross_entropy(logits, target, ignore_index=255))


def test_segmentation_cross_entropy_is_the_mean_over_scored_pixels():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 5, 6, generator=gen)
    target = torch.randint(0, 4, (2, 5, 6), generator=gen)
    target[0, 1:3] = 7  # a custom ignore label
    loss = SegmentationCrossEntropy(ignore_index=7)(logits, target)
    assert loss.item() == pytest.approx(manual_cross_entropy(logits, target, 7).item(), rel=1e-6)


def test_segmentation_cross_entropy_of_nothing_scored_is_zero_with_zero_gradients():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = SegmentationCrossEntropy()(logits, torch.full((1, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    with pytest.raises(ValueError, match=r"target must be \(B, H, W\) = \(1, 4, 4\)"):
        SegmentationCrossEntropy()(logits, torch.zeros(1, 4, dtype=torch.long))

"""CrissCrossAttention: identity start, RCCA recurrence, attention maps, constructor checks."""

import pytest
import torch

from attnblocks import CrissCrossAttention
from tests.reference import LargestTensor


def test_starts_as_identity_with_mmcv_shaped_parameters():
    block = CrissCrossAttention(32)
    x = torch.randn(2, 32, 6, 5)
    assert block.gamma.shape == (1,) and block.gamma.item() == 0.0
    assert block.key_channels == 4  # channels // 8, as CCNet
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)


def test_recurrence_applies_the_same_block_again():
    block = CrissCrossAttention(16, gamma_init=0.5)
    twice = CrissCrossAttention(16, recurrence=2)
    twice.load_state_dict(block.state_dict())
    x = torch.randn(1, 16, 5, 7)
    torch.testing.assert_close(twice(x), block(block(x)))


def test_attention_map_is_the_cross_of_the_weights():
    block = CrissCrossAttention(16, reduction=2)
    x = torch.randn(2, 16, 5, 7)
    weights = block.attention_weights(x)  # (B, H, W, H + W)
    maps = block.attention_map(x, [(0, 0), (3, 6)])
    for index, (row, col) in enumerate([(0, 0), (3, 6)]):
        expected = torch.zeros(2, 5, 7)
        expected[:, :, col] = weights[:, row, col, :5]
        expected[:, row, :] += weights[:, row, col, 5:]
        torch.testing.assert_close(maps[:, index], expected)
        outside = torch.ones(5, 7, dtype=torch.bool)
        outside[row], outside[:, col] = False, False
        assert (maps[:, index][:, outside] == 0).all()


def test_training_step_never_builds_an_n_by_n_tensor():
    block = CrissCrossAttention(16, reduction=2, gamma_init=0.5)
    x = torch.randn(1, 16, 32, 32, requires_grad=True)
    with LargestTensor() as probe:
        block(x).square().sum().backward()
    assert probe.largest <= 32 * 32 * (32 + 32)  # N (H + W); N^2 would be 16x more


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match=r"channels // reduction must be at least 1, got 4 // 8"):
        CrissCrossAttention(4)
    with pytest.raises(ValueError, match="recurrence must be a positive int, got 0"):
        CrissCrossAttention(16, recurrence=0)
    with pytest.raises(ValueError, match="reduction must be a positive int"):
        CrissCrossAttention(16, reduction=0)

"""ContextBlock: GCNet's initial state and its pooling and fusion checks."""

import pytest
import torch

from attnblocks import ContextBlock


def test_zero_initialised_transforms():
    x = torch.randn(2, 16, 5, 7)
    torch.testing.assert_close(ContextBlock(16)(x), x)  # channel_add adds 0
    halved = ContextBlock(16, fusion=("channel_mul",))(x)
    torch.testing.assert_close(halved, x / 2)  # sigmoid(0) scales by 1/2, as GCNet's
    block = ContextBlock(16, ratio=1 / 8, pooling="avg")
    assert block.planes == 2 and not hasattr(block, "conv_mask")
    assert block.channel_mul_conv is None


def test_attention_map_is_the_pooling_softmax():
    block = ContextBlock(16)
    x = torch.randn(2, 16, 4, 6)
    maps = block.attention_map(x, [(0, 0), (3, 5)])
    logits = block.conv_mask(x).flatten(1)
    torch.testing.assert_close(maps[:, 1].flatten(1), logits.softmax(dim=-1))
    with pytest.raises(ValueError, match="attention_map needs pooling='att'"):
        ContextBlock(16, pooling="avg").attention_map(x, [(0, 0)])


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="unknown pooling 'max'; expected one of 'att', 'avg'"):
        ContextBlock(16, pooling="max")
    with pytest.raises(ValueError, match="unknown fusion 'channel_cat'"):
        ContextBlock(16, fusion=("channel_cat",))
    with pytest.raises(ValueError, match="fusion must be a sequence of fusion names"):
        ContextBlock(16, fusion="channel_add")
    with pytest.raises(ValueError, match="fusion needs at least one of"):
        ContextBlock(16, fusion=())
    with pytest.raises(ValueError, match="fusion names must not repeat"):
        ContextBlock(16, fusion=("channel_add", "channel_add"))
    with pytest.raises(ValueError, match="ratio must be a positive number, got 0"):
        ContextBlock(16, ratio=0)
    with pytest.raises(ValueError, match=r"int\(channels \* ratio\) must be at least 1"):
        ContextBlock(3, ratio=0.25)

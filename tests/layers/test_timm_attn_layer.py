"""The blocks as timm's `attn_layer`, built per residual block as attn_layer(channels, **dd)."""

from functools import partial

import pytest
import timm
import torch

from attnblocks import (
    CAM,
    PAM,
    AsymmetricPyramidNonLocal,
    ContextBlock,
    CrissCrossAttention,
    DisentangledNonLocal2d,
    ExpectationMaximizationAttention,
    InterlacedSparseSelfAttention,
    NonLocal2d,
)


@pytest.mark.parametrize(
    "attn_layer, block_type",
    [
        (CAM, CAM),
        (partial(PAM, gamma_init=0.1), PAM),
        (partial(CrissCrossAttention, gamma_init=0.1), CrissCrossAttention),
        *[
            (partial(NonLocal2d, mode=mode, zero_init_last=False), NonLocal2d)
            for mode in ("embedded_gaussian", "gaussian", "dot_product", "concatenation")
        ],
        (
            partial(ContextBlock, zero_init_last=False, fusion=("channel_add", "channel_mul")),
            ContextBlock,
        ),
        (partial(AsymmetricPyramidNonLocal, zero_init_last=False), AsymmetricPyramidNonLocal),
        # (1, 2): even layer4's 2 x 2 maps leave two pixels in every group, so q/k get gradients
        (partial(InterlacedSparseSelfAttention, down_factor=(1, 2)), InterlacedSparseSelfAttention),
        (partial(ExpectationMaximizationAttention, num_bases=8), ExpectationMaximizationAttention),
        *[
            (
                partial(DisentangledNonLocal2d, mode=mode, zero_init_last=False),
                DisentangledNonLocal2d,
            )
            for mode in ("embedded_gaussian", "dot_product")
        ],
    ],
    ids=[
        "CAM",
        "PAM",
        "CrissCross",
        *(f"NonLocal-{m}" for m in ("eg", "g", "dot", "cat")),
        "Context",
        "APNB",
        "ISA",
        "EMA",
        "DNL-eg",
        "DNL-dot",
    ],
)
def test_resnet18_with_attention_in_every_block(attn_layer, block_type):
    # zero_init_last=False: timm zeroes each block's last norm, which would feed the blocks zeros.
    model = timm.create_model(
        "resnet18", num_classes=5, block_args=dict(attn_layer=attn_layer), zero_init_last=False
    )
    blocks = [m for m in model.modules() if isinstance(m, block_type)]
    assert len(blocks) == 8  # resnet18 has 2 + 2 + 2 + 2 basic blocks
    assert sorted({b.channels for b in blocks}) == [64, 128, 256, 512]

    logits = model(torch.randn(2, 3, 64, 48))
    assert logits.shape == (2, 5)
    logits.square().sum().backward()
    for index, block in enumerate(blocks):
        for name, param in block.named_parameters():
            # a bias on logits softmaxed over positions cancels: its true gradient is 0
            if name.endswith("conv_mask.bias"):
                continue
            if param.requires_grad:  # EMA's in_conv is frozen (it feeds only gradient-free EM)
                assert param.grad is not None and param.grad.abs().sum() > 0, (index, name)

"""Blocks that start as the identity stay the identity when timm builds them.

timm's ResNet re-initialises every ``Conv2d`` after building (Kaiming, fan-out), a
block's own zero-initialised last conv included, then calls ``zero_init_last()`` on
every module that has it. A block whose start is "the identity through a zero init"
must come out of that as the identity: the network with the blocks then computes what
the same network without them computes. Add every such block to ``IDENTITY_AT_START``.
"""

from functools import partial

import pytest
import timm
import torch
from torch import nn

from attnblocks import (
    CAM,
    PAM,
    ContextBlock,
    CrissCrossAttention,
    DisentangledNonLocal2d,
    NonLocal2d,
)

#: ``attn_layer`` factories, called as ``attn_layer(channels, device=..., dtype=...)``,
#: of blocks that start as the identity (their last layer or their gamma at zero).
IDENTITY_AT_START = [
    pytest.param(PAM, id="PAM"),
    pytest.param(CAM, id="CAM"),
    pytest.param(CrissCrossAttention, id="CrissCross"),
    *[
        pytest.param(partial(NonLocal2d, mode=mode), id=f"NonLocal-{mode}")
        for mode in ("embedded_gaussian", "gaussian", "dot_product", "concatenation")
    ],
    pytest.param(partial(NonLocal2d, sub_sample=True), id="NonLocal-sub_sample"),
    pytest.param(partial(NonLocal2d, norm_layer=nn.BatchNorm2d), id="NonLocal-norm"),
    pytest.param(ContextBlock, id="Context"),
    pytest.param(partial(ContextBlock, pooling="avg"), id="Context-avg"),
    *[
        pytest.param(partial(DisentangledNonLocal2d, mode=mode), id=f"DNL-{mode}")
        for mode in ("embedded_gaussian", "dot_product")
    ],
]


@pytest.fixture(scope="module")
def plain_resnet() -> nn.Module:
    """resnet18 without attention, its residual branches' last norms at 1 (as trained ones).

    timm's own init would zero those norms: the blocks would then see zeros, and any
    block would pass for the identity.
    """
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=5, zero_init_last=False).eval()


@pytest.mark.parametrize("attn_layer", IDENTITY_AT_START)
def test_the_network_with_the_blocks_equals_the_network_without_them(attn_layer, plain_resnet):
    torch.manual_seed(1)
    model = timm.create_model("resnet18", num_classes=5, block_args=dict(attn_layer=attn_layer))
    blocks = [module for name, module in model.named_modules() if name.endswith(".se")]
    assert len(blocks) == 8 and not any(isinstance(b, nn.Identity) for b in blocks)
    # the backbone's weights into the network with blocks: only the blocks' own are left
    result = model.load_state_dict(plain_resnet.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(".se." in key for key in result.missing_keys)
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), plain_resnet(x))

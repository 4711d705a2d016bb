"""Outputs that a caller may change in place: what timm's residual blocks do to an attn_layer's."""

from __future__ import annotations

from torch import Tensor


def safe_for_inplace(out: Tensor) -> Tensor:
    """``out``, copied when autograd may have saved it (it requires grad).

    A block that ends with a ReLU returns the tensor the ReLU saved for its backward;
    timm's residual blocks add the shortcut onto an ``attn_layer``'s output in place
    (``x += shortcut``), which would then fail in backward. Without gradients nothing is
    saved and nothing is copied.

    Args:
        out: the block's output.
    """
    return out.clone() if out.requires_grad else out

"""Argument and input checks shared by the attention blocks."""

from __future__ import annotations

from torch import Tensor


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is a positive int, else raise a ValueError naming ``name``.

    Args:
        name: the argument's name, for the message.
        value: what the caller passed.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_feature_map(x: object, channels: int, block: str) -> None:
    """Raise if ``x`` is not a non-empty floating-point ``(B, channels, H, W)`` tensor.

    Args:
        x: the block's input.
        channels: the channel count the block was built for.
        block: the block's name, for the message.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{block} expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(
            f"{block} expects a 4D feature map (B, C, H, W), "
            f"got a {x.ndim}D tensor of shape {tuple(x.shape)}"
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"{block} was built for {channels} channels, got an input with {x.shape[1]} "
            f"channels (shape {tuple(x.shape)})"
        )
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(
            f"{block} expects a non-empty spatial map, got H x W = "
            f"{x.shape[2]} x {x.shape[3]} (shape {tuple(x.shape)})"
        )
    if not x.is_floating_point():
        raise ValueError(f"{block} expects a floating-point input, got dtype {x.dtype}")

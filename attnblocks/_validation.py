"""Argument and input checks shared across the package; each raises a ValueError that says
what was expected and what came in."""

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


def check_reduced_channels(channels: object, reduction: object) -> int:
    """Return ``channels // reduction``, the query/key width of an attention block.

    Raises a ValueError unless both are positive ints and the quotient is at least 1.

    Args:
        channels: the block's input channels.
        reduction: by how much queries and keys are narrower.
    """
    check_positive_int("channels", channels)
    check_positive_int("reduction", reduction)
    if channels // reduction < 1:
        raise ValueError(
            f"channels // reduction must be at least 1, got {channels} // {reduction} = 0"
        )
    return channels // reduction


def default_inter_channels(in_channels: object, inter_channels: object | None) -> int:
    """Return a head's ``inter_channels``, ``in_channels // 4`` when None, checked positive.

    Args:
        in_channels: the channels of the backbone features.
        inter_channels: what the caller passed (None: the default).
    """
    check_positive_int("in_channels", in_channels)
    if inter_channels is None:
        inter_channels = in_channels // 4
        if inter_channels < 1:
            raise ValueError(
                f"in_channels // 4 is 0 for in_channels={in_channels}; pass inter_channels"
            )
    return check_positive_int("inter_channels", inter_channels)


def check_choice(what: str, value: str, valid: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``valid``, else raise a ValueError naming the choices.

    Args:
        what: what the value names, for the message (``"attention backend"``).
        value: the name a caller asked for.
        valid: the names that are accepted.
    """
    if value not in valid:
        choices = ", ".join(repr(name) for name in valid)
        raise ValueError(f"unknown {what} {value!r}; expected one of {choices}")
    return value


def check_float_tensor(what: str, x: object, axes: tuple[str, ...]) -> None:
    """Raise unless ``x`` is a floating-point tensor with one dimension per name in ``axes``.

    Args:
        what: the tensor's role, for the message (``"query"``, ``"PAM input"``).
        x: what the caller passed.
        axes: names of the expected dimensions, e.g. ``("B", "C", "H", "W")``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != len(axes):
        raise ValueError(
            f"{what} must be a {len(axes)}D tensor ({', '.join(axes)}), "
            f"got a {x.ndim}D tensor of shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{what} must be floating-point, got dtype {x.dtype}")


def check_feature_map(x: object, channels: int, block: str) -> None:
    """Raise unless ``x`` is a non-empty floating-point ``(B, channels, H, W)`` tensor.

    Args:
        x: the block's input.
        channels: the channel count the block was built for.
        block: the block's name, for the message.
    """
    check_float_tensor(f"{block} input", x, ("B", "C", "H", "W"))
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

"""Names of the attention backends and their validation.

Every backend of a function computes the same mathematical result; they differ
only in speed and memory. ``"auto"`` is resolved to a concrete backend per call.
"""

from __future__ import annotations

from typing import Literal

from .._validation import check_choice, check_positive_int

PositionBackend = Literal["auto", "bmm"]
ChannelBackend = Literal["auto", "bmm"]

#: Backends of :func:`attnblocks.functional.position_attention` (PAM).
POSITION_BACKENDS: tuple[str, ...] = ("auto", "bmm")
#: Backends of :func:`attnblocks.functional.channel_attention` (CAM).
CHANNEL_BACKENDS: tuple[str, ...] = ("auto", "bmm")


def check_backend(backend: str, valid: tuple[str, ...]) -> str:
    """Return ``backend`` if it is one of ``valid``, else raise a ValueError naming the choices.

    Args:
        backend: the name a caller asked for.
        valid: the backends the caller's function supports.
    """
    return check_choice("attention backend", backend, valid)


def check_chunk_size(chunk_size: int | None) -> int | None:
    """Return ``chunk_size`` if it is None or a positive int, else raise a ValueError.

    Args:
        chunk_size: number of query positions a memory-efficient backend handles at once.
    """
    return None if chunk_size is None else check_positive_int("chunk_size", chunk_size)

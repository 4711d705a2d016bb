"""Names of the attention backends, the global override and the record of what ran.

Every backend of a function computes the same mathematical result; they differ
only in speed and memory. ``"auto"`` is resolved per call: to the global override
when one is set (:func:`set_attention_backend`, or the ``ATTNBLOCKS_BACKEND``
environment variable), else by a rule on device, dtype, size and free memory.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Iterator
from typing import Literal

import torch

from .._validation import check_choice, check_positive_int

PositionBackend = Literal["auto", "bmm", "chunked", "sdpa"]
ChannelBackend = Literal["auto", "bmm"]

#: Backends of :func:`attnblocks.functional.position_attention` (PAM).
POSITION_BACKENDS: tuple[str, ...] = ("auto", "bmm", "chunked", "sdpa")
#: Backends of :func:`attnblocks.functional.channel_attention` (CAM).
CHANNEL_BACKENDS: tuple[str, ...] = ("auto", "bmm")
#: Environment variable that sets what ``"auto"`` means for position attention.
BACKEND_ENV_VAR = "ATTNBLOCKS_BACKEND"

_override: str | None = None  # process-wide, from set_attention_backend
# Scoped, from the attention_backend context manager: a ContextVar keeps threads apart.
_scoped: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "attention_backend", default=None
)
_record = threading.local()


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


def set_attention_backend(backend: str | None) -> None:
    """Make ``"auto"`` mean ``backend`` for position attention, process-wide.

    A backend named explicitly (``PAM(backend="bmm")``) still wins. ``None`` or
    ``"auto"`` restores the automatic choice (or the environment variable's).

    Args:
        backend: one of :data:`POSITION_BACKENDS`, or None.
    """
    global _override
    if backend is not None:
        check_backend(backend, POSITION_BACKENDS)
    _override = None if backend == "auto" else backend


@contextlib.contextmanager
def attention_backend(backend: str | None) -> Iterator[None]:
    """Make ``"auto"`` mean ``backend`` inside a ``with`` block (this thread or task only).

    Takes precedence over :func:`set_attention_backend` and the environment variable
    while the block runs; ``None`` or ``"auto"`` lets the automatic rule decide there.

    Args:
        backend: one of :data:`POSITION_BACKENDS`, or None.
    """
    if backend is not None:
        check_backend(backend, POSITION_BACKENDS)
    token = _scoped.set("auto" if backend is None else backend)
    try:
        yield
    finally:
        _scoped.reset(token)


def get_attention_backend() -> str | None:
    """What ``"auto"`` is overridden with: an enclosing :func:`attention_backend` block, else
    :func:`set_attention_backend`, else ``$ATTNBLOCKS_BACKEND``, else None (the automatic
    rule decides)."""
    scoped = _scoped.get()
    if scoped is not None:
        return None if scoped == "auto" else scoped
    if _override is not None:
        return _override
    name = os.environ.get(BACKEND_ENV_VAR, "").strip()
    if not name or name == "auto":
        return None
    if name not in POSITION_BACKENDS:
        choices = ", ".join(repr(valid) for valid in POSITION_BACKENDS)
        raise ValueError(
            f"{BACKEND_ENV_VAR}={name!r} is not an attention backend; expected one of {choices}"
        )
    return name


if hasattr(torch.compiler, "assume_constant_result"):
    # torch.compile reads the override once per trace, as a constant: older dynamo cannot
    # trace ContextVar.get (torch 2.11) or a missing environment variable (torch 2.4).
    get_attention_backend = torch.compiler.assume_constant_result(get_attention_backend)


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will want gradients of any of ``tensors`` (training, not inference)."""
    return torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors)


def record_backend(backend: str) -> None:
    """Remember the backend that ran the last position attention call of this thread."""
    if not torch.compiler.is_compiling():  # a Python side effect has no place in a compiled graph
        _record.last = backend


def last_attention_backend() -> str | None:
    """The concrete backend (``"bmm"``, ``"chunked"`` or ``"sdpa"``) that ran the most
    recent position attention call in this thread, None before the first call.

    ``"sdpa"`` is only reported when a fused kernel ran; when none could, the call
    fell back to ``"chunked"`` and that is reported.
    """
    return getattr(_record, "last", None)

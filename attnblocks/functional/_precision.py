"""Precision rules shared by the attention functions.

PAM energies are unscaled dot products and CAM energies sum over every position,
so both overflow float16 (max 65504) long before the softmax sees them. The rule
here: energies and softmax run in at least float32, whatever the input dtype and
whether or not ``torch.autocast`` is active.
"""

from __future__ import annotations

import contextlib

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def attention_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype energies and softmax are computed in for inputs of ``dtype``.

    Args:
        dtype: dtype of the tensors entering the attention.

    Returns:
        ``torch.float32`` for float16/bfloat16 inputs, ``dtype`` itself otherwise
        (float32 stays float32, float64 stays float64).
    """
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which ``torch.autocast`` does not lower matmul precision on ``device``.

    Args:
        device: the device the computation runs on.
    """
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know has no autocast to turn off
        return contextlib.nullcontext()

"""Precision rules shared by the attention functions.

PAM energies are unscaled dot products and CAM energies sum over every position,
so both overflow float16 (max 65504) long before the softmax sees them. The rules here:

- energies and softmax run in at least float32, whatever the input dtype and whether
  or not ``torch.autocast`` is active (:func:`attention_dtype`);
- the big matmuls of the value path (``P V`` forward, ``P^T dO`` and ``dO V^T``
  backward) run in the low-precision dtype of the call (the autocast dtype, or the
  value's own float16/bfloat16) where the device multiplies that dtype faster than
  float32, as the naive computation does under autocast; on a device where it is
  slower (a CPU without bfloat16/float16 matrix instructions) they run in float32,
  which is both faster and more exact there (:func:`value_path_dtype`).
"""

from __future__ import annotations

import contextlib
import threading
import time

import torch
from torch import Tensor

LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)
# Whether a low-precision matmul beats float32, measured once per (device, dtype).
_LOW_PRECISION_IS_FASTER: dict[tuple[str, torch.dtype], bool] = {}
_MEASURING = threading.Lock()


def attention_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype energies and softmax are computed in for inputs of ``dtype``.

    Args:
        dtype: dtype of the tensors entering the attention.

    Returns:
        ``torch.float32`` for float16/bfloat16 inputs, ``dtype`` itself otherwise
        (float32 stays float32, float64 stays float64).
    """
    return torch.float32 if dtype in LOW_PRECISION_DTYPES else dtype


def autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which ``torch.autocast`` does not lower matmul precision on ``device``.

    Args:
        device: the device the computation runs on.
    """
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know has no autocast to turn off
        return contextlib.nullcontext()


def low_precision_dtype(tensor: Tensor) -> torch.dtype | None:
    """The low-precision dtype a call on ``tensor`` runs in, or None for a full-precision call.

    Args:
        tensor: a tensor entering the attention (its device and dtype decide).

    Returns:
        The autocast dtype while ``torch.autocast`` is enabled on the tensor's device,
        else the tensor's dtype when it is float16 or bfloat16, else None.
    """
    device_type = tensor.device.type
    try:
        if torch.is_autocast_enabled(device_type) and tensor.dtype != torch.float64:
            return torch.get_autocast_dtype(device_type)  # autocast leaves float64 alone
    except (RuntimeError, TypeError):  # torch < 2.4 or a device type autocast does not know
        pass
    return tensor.dtype if tensor.dtype in LOW_PRECISION_DTYPES else None


def _matmul_seconds(device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    """Best times of ``(128 x 512) @ (512 x 128)`` matmuls in float32 and in ``dtype``.

    The two dtypes take turns, so that load from other processes slows both alike;
    the slow dtype stops after about 20 ms (float16 on a CPU without float16 units
    takes ~100x float32's time).
    """
    generator = torch.Generator(device=device).manual_seed(0)  # leave the global RNG alone
    operands = {
        each: (
            torch.randn(128, 512, device=device, generator=generator).to(each),
            torch.randn(512, 128, device=device, generator=generator).to(each),
        )
        for each in (torch.float32, dtype)
    }
    best = {each: float("inf") for each in operands}
    spent = {each: 0.0 for each in operands}
    for _ in range(8):
        for each, (left, right) in operands.items():
            if spent[each] > 0.02:
                continue
            torch.mm(left, right)  # warm-up, then time one more
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            torch.mm(left, right)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            best[each], spent[each] = min(best[each], elapsed), spent[each] + elapsed
    return best[torch.float32], best[dtype]


def _outside_tracing() -> contextlib.AbstractContextManager:
    """A context with no dispatch mode active (a tracer's fake tensors, proxies): real tensors."""
    try:
        from torch.utils._python_dispatch import _disable_current_modes
    except ImportError:  # a torch without dispatch modes has nothing to set aside
        return contextlib.nullcontext()
    return _disable_current_modes()


def low_precision_is_faster(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether ``device`` multiplies ``dtype`` matrices faster than float32 ones.

    Measured once per device type and dtype (a few small matmuls, at most ~50 ms) and
    remembered for the process; "faster" here means at most 1.25x float32's time.
    Eager code, ``torch.compile`` and ``torch.export`` get the same answer: while a
    graph is traced the measurement still runs on real tensors (any fake-tensor or
    tracing mode set aside for it) and the compiled graph takes the answer as a
    constant, so compiled and eager models take the same value path. Threads that ask
    at once wait for one measurement.

    Args:
        device: the device the attention runs on.
        dtype: ``torch.float16`` or ``torch.bfloat16``.
    """
    return _low_precision_is_faster(torch.device(device).type, dtype)


@torch.compiler.assume_constant_result  # torch.compile runs it while tracing; a constant after
def _low_precision_is_faster(device_type: str, dtype: torch.dtype) -> bool:
    """:func:`low_precision_is_faster` of a device type, measured on real tensors once."""
    cache_key = (device_type, dtype)
    faster = _LOW_PRECISION_IS_FASTER.get(cache_key)
    if faster is not None:
        return faster
    with _MEASURING:  # one measurement: set_num_threads below is process-wide
        faster = _LOW_PRECISION_IS_FASTER.get(cache_key)
        if faster is not None:
            return faster
        threads = torch.get_num_threads()
        if device_type == "cpu":
            # One thread: a thread pool waiting on a core that another process holds times
            # the scheduler, not the matmul; the dtypes' speed ratio is the same per core.
            torch.set_num_threads(1)
        try:
            with _outside_tracing(), torch.no_grad(), autocast_disabled(torch.device(device_type)):
                full, low = _matmul_seconds(torch.device(device_type), dtype)
        finally:
            torch.set_num_threads(threads)
        faster = _LOW_PRECISION_IS_FASTER[cache_key] = low < 1.25 * full
    return faster


def value_path_dtype(tensor: Tensor, compute_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the memory-efficient backends' value-path matmuls for this call.

    Args:
        tensor: the value tensor (its device, its dtype and the autocast state decide).
        compute_dtype: the dtype energies and softmax run in (float32 or float64).

    Returns:
        The call's low-precision dtype (:func:`low_precision_dtype`) where the device
        multiplies it faster than float32 (:func:`low_precision_is_faster`), else
        ``compute_dtype``.
    """
    low = low_precision_dtype(tensor)
    if low is None or compute_dtype != torch.float32:
        return compute_dtype
    return low if low_precision_is_faster(tensor.device, low) else compute_dtype

"""``"auto"`` on CUDA: a one-time measurement among the position-attention backends.

Which of bmm, chunked and the fused kernels (each with its value split) is fastest for
PAM's shapes depends on the GPU, its cuDNN and the dtype in ways no rule written ahead
of time knows. So the first call of each *shape class* (device, dtypes, gradient mode,
batch, widths, and the numbers of query and key positions rounded up to powers of two)
times every candidate on inputs of the call's shapes, drawn from a generator of its own
(the global random stream is left alone), and remembers the fastest for the process.

- bmm is a candidate only where its ``N x N`` matrices fit for every size of the class
  (the memory rule of :func:`attnblocks.functional.select_position_backend`); a
  candidate that runs out of memory, or a fused kernel that torch turns down, drops out.
- Candidates come in the order sdpa plans, then for training calls the same kernels'
  forward with the chunked backward (``_fused_forward.py``), chunked, bmm (least memory
  first); one within 2% of the fastest time wins over a later one.
- Under ``torch.distributed`` with gradients (a training step, which every rank runs),
  rank 0 measures and broadcasts its choice so every rank runs the same backend; the
  other ranks wait and measure nothing. Every rank must meet a new shape class at the
  same step (true for fixed-size crops); inference (often on one rank only) decides per
  process, as a collective there could wait forever.
- No measurement while ``torch.compile`` traces, fake tensors stand in, or a CUDA graph
  captures: the written rule decides there.

Explicit backends, :func:`~attnblocks.functional.set_attention_backend`,
:func:`~attnblocks.functional.attention_backend` and ``$ATTNBLOCKS_BACKEND`` still win:
nothing is measured for them.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

#: Device types on which ``"auto"`` measures (elsewhere the written rule decides).
PROBED_DEVICE_TYPES: tuple[str, ...] = ("cuda",)
#: Timed runs per candidate after one warm-up run; the best counts.
PROBE_REPEATS = 3
#: A candidate within this factor of the fastest time wins over later (hungrier) ones.
TIE_TOLERANCE = 1.02

_clock = time.perf_counter  # the probe's clock (tests substitute a fake one)
_DECIDED: dict[tuple, Candidate] = {}  # shape class -> choice, for this process
_TIMINGS: dict[tuple, dict[str, float]] = {}  # shape class -> seconds per candidate label
_LOCK = threading.RLock()


class Candidate(NamedTuple):
    """A backend ``"auto"`` can run: its name, and for ``"sdpa"`` the value split, kernel and
    backward.

    Attributes:
        backend: ``"bmm"``, ``"chunked"`` or ``"sdpa"``.
        value_split: parts of the value width (None: the kernel's cheapest split).
        kernel: the fused kernel (``"flash"``, ``"efficient"``, ``"cudnn"``), None for any.
        chunked_backward: ``"sdpa"`` with gradients: the fused forward with the chunked
            backward (``_fused_forward.py``) instead of the kernel's own backward.
    """

    backend: str
    value_split: int | None = None
    kernel: str | None = None
    chunked_backward: bool = False

    @property
    def label(self) -> str:
        """``"sdpa[cudnn]"``, ``"sdpa[flash, split 8, chunked backward]"``, ``"chunked"``..."""
        details = [part for part in (self.kernel,) if part]
        if self.value_split is not None:
            details.append(f"split {self.value_split}")
        if self.chunked_backward:
            details.append("chunked backward")
        return f"{self.backend}[{', '.join(details)}]" if details else self.backend


def _fake_tensors_active() -> bool:
    """Whether a FakeTensorMode is active (shape propagation, export): kernels take no time."""
    try:
        from torch._guards import detect_fake_mode
    except ImportError:  # a torch without it has no fake tensors to worry about
        return False
    return detect_fake_mode() is not None


def bucket(positions: int) -> int:
    """``positions`` rounded up to a power of two: the shape class's size."""
    return 1 << max(positions - 1, 0).bit_length()


def probes(device: torch.device) -> bool:
    """Whether ``"auto"`` measures on ``device`` now (not while tracing or capturing).

    Args:
        device: where the attention runs.
    """
    if device.type not in PROBED_DEVICE_TYPES:
        return False
    if torch.compiler.is_compiling() or _fake_tensors_active():
        return False
    return not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(run: Callable[[], bool], device: torch.device, label: str = "") -> float:
    """Best time of ``run`` over :data:`PROBE_REPEATS` runs after a warm-up; ``inf`` when it
    reports that it did not run as asked (a fused kernel turned down), ran out of memory or
    failed (a warning names the error: a training step should not die of a candidate)."""
    try:
        if not run():
            return math.inf
        best = math.inf
        for _ in range(PROBE_REPEATS):
            _synchronize(device)
            start = _clock()
            run()
            _synchronize(device)
            best = min(best, _clock() - start)
        return best
    except torch.OutOfMemoryError:
        return math.inf
    except RuntimeError as error:
        warnings.warn(
            f"'auto' leaves out {label or 'a candidate'}, which failed in its measurement: "
            f"{str(error).splitlines()[0][:200]}",
            stacklevel=2,
        )
        return math.inf
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()  # what a candidate cached is not the next one's to use


def measure(
    candidates: Sequence[Candidate],
    run: Callable[[Candidate], bool],
    device: torch.device,
) -> dict[Candidate, float]:
    """Seconds per candidate (``inf`` where it cannot run).

    Args:
        candidates: what to time.
        run: runs one candidate once on the probe's inputs; False when it could not run
            as that candidate.
        device: where they run.
    """
    return {
        candidate: _seconds(lambda c=candidate: run(c), device, candidate.label)
        for candidate in candidates
    }


def fastest(timings: dict[Candidate, float]) -> Candidate | None:
    """The first candidate (in the given order) within :data:`TIE_TOLERANCE` of the fastest
    time; None when none could run.

    Args:
        timings: seconds per candidate, in order of preference.
    """
    best = min(timings.values(), default=math.inf)
    if best == math.inf:
        return None
    return next(c for c, seconds in timings.items() if seconds <= TIE_TOLERANCE * best)


def _training_group() -> bool:
    """Whether a default process group of more than one rank is up."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def decide(
    local_key: tuple,
    shared_key: tuple,
    candidates: Sequence[Candidate],
    run: Callable[[Candidate], bool],
    device: torch.device,
    fallback: Candidate,
    collective: bool,
) -> Candidate:
    """The choice for a shape class: measured once per process (or taken from rank 0).

    Args:
        local_key: the class in this process (may name the device index).
        shared_key: the class as every rank names it (compared with rank 0's).
        candidates: what may run, in order of preference.
        run: runs one candidate once (see :func:`measure`).
        device: where they run.
        fallback: the written rule's choice, used when nothing could be measured.
        collective: whether rank 0's choice is broadcast (a training step).
    """
    with _LOCK:
        choice = _DECIDED.get(local_key)
        if choice is not None:
            return choice
        distributed = collective and _training_group()
        rank, choice = 0, fallback
        if distributed:
            import torch.distributed as dist

            rank = dist.get_rank()
        if rank == 0:
            timings = measure(candidates, run, device)
            _TIMINGS[local_key] = {c.label: seconds for c, seconds in timings.items()}
            choice = fastest(timings) or fallback
        if distributed:
            payload = [(shared_key, tuple(choice))] if rank == 0 else [None]
            dist.broadcast_object_list(payload, src=0)
            their_key, theirs = payload[0]
            if their_key == shared_key:
                choice = Candidate(*theirs)
            else:
                warnings.warn(
                    f"rank {rank} resolved 'auto' for another shape class than rank 0 at the "
                    "same step; it runs the written rule's choice there (ranks may differ)",
                    stacklevel=4,
                )
                choice = fallback
        _DECIDED[local_key] = choice
        return choice


def probe_timings() -> dict[tuple, dict[str, float]]:
    """What this process measured: seconds per candidate label, per shape class."""
    return {key: dict(value) for key, value in _TIMINGS.items()}


def clear() -> None:
    """Forget every measured choice (the next call of each class measures again)."""
    with _LOCK:
        _DECIDED.clear()
        _TIMINGS.clear()

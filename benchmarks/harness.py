"""Measurement plumbing shared by the benchmark scripts: timing, isolated peak memory, ceilings.

- Time: ``time.perf_counter`` on CPU, CUDA events on GPU, synchronised; the median of
  repeats after a warm-up run, or the single run of a case longer than a threshold.
- Peak memory above what a case's inputs and model already hold: on CUDA
  ``torch.cuda.max_memory_allocated``; on CPU each case runs in a forked child process
  whose resident-set high-water mark (Linux ``VmHWM``, reset before the case through
  ``/proc/self/clear_refs``) is read, with glibc told to return large freed blocks to
  the system at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import multiprocessing
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from attnblocks.functional.position import _free_memory  # the one reading of free memory

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CPU_MEMORY_METHOD = "VmHWM of a forked process per case"
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated"


@dataclasses.dataclass
class Measurement:
    """What measuring one case gave."""

    seconds: float
    repeats: int
    peak_bytes: int
    memory_method: str


def configure_malloc() -> None:
    """Make glibc hand large freed blocks back to the OS, so a case's peak is its own."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: blocks above this are mmap'ed
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``fn()`` takes on ``device``, synchronised."""
    if device.type == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(stop) / 1e3
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _high_water_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_high_water() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # 5: reset the peak resident set size (Linux >= 4.0)


def measure(
    run: Callable[[], Any], device: torch.device, repeats: int, long_case_seconds: float
) -> Measurement:
    """Time ``run`` and measure the peak memory it needs beyond what exists now.

    The first run is the warm-up; when it took longer than ``long_case_seconds`` it is
    the measurement, else the median of ``repeats`` more runs is.

    Args:
        run: one execution of the case (inputs and model already built).
        device: where it runs.
        repeats: timed runs after the warm-up.
        long_case_seconds: a warm-up longer than this is the only run.
    """
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base, method = torch.cuda.memory_allocated(device), CUDA_MEMORY_METHOD
    else:
        base, method = _resident_bytes(), CPU_MEMORY_METHOD
        _reset_high_water()
    times = [timed(run, device)]
    if times[0] <= long_case_seconds:
        times = [timed(run, device) for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _high_water_bytes()
    return Measurement(statistics.median(times), len(times), max(peak - base, 0), method)


def out_of_memory_reason(error: BaseException) -> str | None:
    """The first line of an out-of-memory error, or None for any other error."""
    if isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "allocate" in str(error)
    ):
        return str(error).splitlines()[0][:200]
    return None


def _virtual_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(connection, fn: Callable[..., dict], args: tuple, memory_cap: int | None) -> None:
    try:
        if memory_cap is not None:
            # Allocations beyond the cap fail with an error (reported as "oom") instead of
            # waking the kernel's OOM killer on a shared machine.
            limit = _virtual_bytes() + memory_cap
            resource.setrlimit(
                resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1])
            )
        connection.send(fn(*args))
    except BaseException as error:  # report anything to the parent instead of dying silently
        connection.send({"error": f"{type(error).__name__}: {error}"})
    finally:
        connection.close()


def run_forked(fn: Callable[..., dict], *args: Any, memory_cap: int | None = None) -> dict:
    """``fn(*args)`` in a forked child process; its result dict, or ``{"error": ...}``.

    A child killed by the kernel (out of memory) gives ``{"error": ..., "killed": True}``.
    The parent must not have run parallel torch work before: OpenMP thread pools do not
    survive a fork.

    Args:
        fn: returns a JSON-ready dict.
        *args: its arguments.
        memory_cap: bytes the child may allocate beyond what it has at the start.
    """
    parent, child = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.get_context("fork").Process(
        target=_child, args=(child, fn, args, memory_cap)
    )
    process.start()
    child.close()
    try:
        payload = parent.recv()
    except EOFError:  # the child died without a word, e.g. killed by the OOM killer
        payload = None
    process.join()
    if payload is None:
        return {
            "error": f"worker exited with code {process.exitcode}",
            "killed": process.exitcode == -9,
        }
    return payload


def measure_on_device(
    measure_case: Callable[..., dict], case: Any, result_type: type, *args: Any
) -> Any:
    """Measure a case: in this process on CUDA, in a forked child (its own peak) on CPU.

    Args:
        measure_case: ``measure_case(case, *args)`` returns the result's fields as a dict.
        case: a dataclass with a ``device`` field, whose fields start the result's.
        result_type: the result dataclass (``status`` and ``detail`` fields for failures).
        *args: the measurement's further arguments (repeats...).
    """
    if case.device != "cpu":
        result = result_type(**measure_case(case, *args))
        torch.cuda.empty_cache()
        return result
    cap = int(0.9 * free_memory_bytes())  # fail with an error rather than trigger the OOM killer
    payload = run_forked(measure_case, case, *args, memory_cap=cap)
    if "error" in payload:
        status = "oom" if payload.get("killed") or "allocate" in payload["error"] else "error"
        return result_type(**dataclasses.asdict(case), status=status, detail=payload["error"][:300])
    return result_type(**payload)


def capped_child_result(
    payload: dict, case: Any, result_type: type, cap_gib: float, why: str = ""
) -> Any:
    """The result of a case run by :func:`run_forked` under a memory cap of ``cap_gib``.

    Args:
        payload: what :func:`run_forked` returned.
        case: the case dataclass, whose fields start the result's.
        result_type: the result dataclass (``status`` and ``detail`` fields for failures).
        why: said after the cap when the case ran out of memory (what it needed).
    """
    if "error" not in payload:
        return result_type(**payload)
    error = payload["error"]
    out_of_memory = payload.get("killed") or "alloc" in error or "memory" in error.lower()
    detail = error.splitlines()[0][:160] if error else ""
    if out_of_memory:
        detail = f"over the {cap_gib:g} GiB cap" + (f"; {why}" if why else "")
    return result_type(**dataclasses.asdict(case), status="oom" if out_of_memory else "error",
                       detail=detail)  # fmt: skip


def matmul_ceiling_gflops(device: torch.device, dtype: torch.dtype) -> float:
    """Best GFLOP/s of a large square matmul on ``device`` in ``dtype``."""
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = math.inf
    for _ in range(4):
        best = min(best, timed(lambda: a @ b, device))
    return 2 * size**3 / best / 1e9


def _ceilings(device: str, dtypes: list[str]) -> dict[str, float]:
    return {name: matmul_ceiling_gflops(torch.device(device), DTYPES[name]) for name in dtypes}


def measure_ceilings(device: str, dtypes: list[str]) -> dict[str, float]:
    """Matmul ceilings per dtype; on CPU in a child, so the parent stays fork-safe."""
    return _ceilings(device, dtypes) if device != "cpu" else run_forked(_ceilings, device, dtypes)


def free_memory_bytes() -> int:
    """Memory available to a new allocation now (Linux: MemAvailable), as "auto" measures it."""
    return _free_memory(torch.device("cpu"))


def device_name(device: str) -> str:
    """The GPU's name, or the CPU model with cores, torch threads and matrix units."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    units = cpu_matrix_units()
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, {units}"


def cpu_matrix_units() -> str:
    """The CPU's low-precision matrix instructions from its flags: ``"amx"`` (AMX bf16),
    ``"avx512bf16"``, or ``"nobf16"`` (bfloat16 matmuls emulated, slower than float32)."""
    with contextlib.suppress(OSError):
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
        if "amx_bf16" in flags:
            return "amx"
        if "avx512_bf16" in flags or "bf16" in flags:
            return "avx512bf16" if "avx512_bf16" in flags else "bf16"
        return "nobf16"
    return "unknown"


def device_tag(device: str) -> str:
    """A short file-name tag: ``cuda-h100``, ``cpu-xeon2c-nobf16``..."""
    if device.startswith("cuda"):
        return "cuda-" + torch.cuda.get_device_name(torch.device(device)).split()[-1].lower()
    words = [w.replace("(R)", "").lower() for w in device_name(device).split(",")[0].split()]
    family = next((w for w in words if w in ("xeon", "epyc", "core", "ryzen", "apple")), "")
    return f"cpu-{family}{os.cpu_count()}c-{cpu_matrix_units()}"


def _low_precision_verdicts(device: str) -> dict[str, str]:
    from attnblocks.functional import low_precision_is_faster

    return {
        name: "faster" if low_precision_is_faster(device, DTYPES[name]) else "slower"
        for name in ("bfloat16", "float16")
    }


def low_precision_note(device: str) -> str:
    """What the package measures of this device: whether its bfloat16/float16 matmuls beat
    float32, which decides the memory-efficient backends' value path under autocast (on CPU
    measured in a child, so the parent stays fork-safe)."""
    verdicts = (
        run_forked(_low_precision_verdicts, device)
        if device == "cpu"
        else _low_precision_verdicts(device)
    )
    return "low-precision matmul vs float32: " + ", ".join(f"{k} {v}" for k, v in verdicts.items())


def variant_label(
    backend: str,
    kernel: str | None = None,
    value_split: int | None = None,
    chunked_backward: bool = False,
    chunk_size: int | None = None,
) -> str:
    """A benchmark case's backend with what is forced on it, as the tables name it:
    ``sdpa [flash, split 8]``, ``sdpa [chunked backward]``, ``chunked``.

    Args:
        backend: the backend (or reference) name.
        kernel: a forced fused kernel.
        value_split: a forced number of value parts.
        chunked_backward: the fused forward with the chunked backward.
        chunk_size: a forced chunk size (for tables without a chunk column).
    """
    forced = [kernel] if kernel else []
    if value_split is not None:
        forced.append(f"split {value_split}")
    if chunk_size is not None:
        forced.append(f"chunk {chunk_size}")
    if chunked_backward:
        forced.append("chunked backward")
    return backend + (f" [{', '.join(forced)}]" if forced else "")


def default_out_dir() -> Path:
    """Where results go unless ``--out`` says otherwise: the run folder ``runs/benchmarks``
    (git ignores ``runs/``); committed tables are written with ``--out benchmarks/results``."""
    return Path("runs") / "benchmarks"


def torch_tag() -> str:
    """``torch<major.minor>``."""
    return "torch" + ".".join(torch.__version__.split("+")[0].split(".")[:2])


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"

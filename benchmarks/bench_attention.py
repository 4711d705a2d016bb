"""Benchmark DANet's attention blocks per backend: time, peak memory and GFLOP/s.

Every case runs the PAM or CAM module (1x1 projections included) on a
``(B, C, H, W)`` map with ``N = H * W`` positions, forward only or forward +
backward, in float32 or under autocast (float16 / bfloat16).

PAM's ``sdpa`` backend also runs as variants: its value width forced into
``--value-splits`` parts, and forced onto each of ``--kernels`` (each kernel's cheapest
split, and each forced split); with ``--chunked-backward``, training cases of the fused
forward with the chunked backward (the dispatch's plan and each kernel's cheapest: a
candidate of ``auto`` on CUDA); a variant that no fused kernel takes is reported
"rejected". The table names the plan that ran (``flash 8x64/64``: 8 value parts, query/key
and part widths 64). ``direct`` is a reference, not a package backend: torch's
memory-efficient kernel called as people call it, on the module's q, k, v in the
autocast dtype (64/512 for C=512), without the precision contract's care.

Measurement (``benchmarks/harness.py``):
- time: median of ``--repeats`` runs after one warm-up run (a case whose warm-up
  alone takes longer than ``--long-case-seconds`` is timed by that single run),
  after a run of the same case on a 16 x 16 map that loads code and workspaces;
  ``time.perf_counter`` on CPU, CUDA events on GPU, synchronised.
- peak memory above what the inputs and the module already hold:
  on CUDA ``torch.cuda.max_memory_allocated``; on CPU each case runs in a forked
  child process whose resident-set high-water mark (Linux ``VmHWM``) is read.
- GFLOP/s: the model FLOPs of the case (convolutions and attention matmuls of the
  bmm algorithm; a backward counts twice its forward; softmax and elementwise work
  not counted; recomputation by the chunked backend not counted) over the time,
  against the device's ceiling measured in the same run (after the cases) with a large
  matmul.

Outputs (in ``--out``): ``<stem>.json`` with every case, ``<stem>.md`` with the
table (both rewritten after every case, so that a run stopped midway leaves the cases it
finished), and ``<stem>-<block>-<mode>-<dtype>.png`` plots (time and peak memory vs N,
log-log, one line per backend) when matplotlib is installed.

Examples::

    python benchmarks/bench_attention.py --quick
    python benchmarks/bench_attention.py --blocks pam --modes train --sizes 16384 32768
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import platform
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared harness, run as a script

from harness import (
    DTYPES,
    configure_malloc,
    default_out_dir,
    device_name,
    device_tag,
    free_memory_bytes,
    low_precision_note,
    measure,
    measure_ceilings,
    mib,
    out_of_memory_reason,
    run_forked,
    torch_tag,
    variant_label,
)

from attnblocks import CAM, PAM
from attnblocks.functional import (
    _autotune,
    _fused_forward,
    _precision,
    _sdpa,
    last_attention_backend,
)

PAM_BACKENDS = ("bmm", "chunked", "sdpa", "auto")
REFERENCES = ("direct",)  # not package backends: see the module docstring
CAM_BACKENDS = ("bmm", "auto")
QUICK = dict(sizes=[1024, 4096], dtypes=["float32"], chunk_sizes=[], repeats=3)
FULL_SIZES = [1024, 2048, 4096, 8192, 16384, 32768, 65536]


@dataclasses.dataclass
class Case:
    """One benchmark configuration."""

    block: str  # "pam" or "cam"
    backend: str
    chunk_size: int | None
    dtype: str
    mode: str  # "forward" or "train" (forward + backward)
    positions: int
    height: int
    width: int
    channels: int
    batch: int
    device: str
    value_path: str = (
        "measured"  # low-precision value path: "measured" (the rule), "low", "float32"
    )
    value_split: int | None = None  # sdpa: forced number of value parts
    kernel: str | None = None  # sdpa: forced fused kernel ("flash", "efficient", "cudnn")
    chunked_backward: bool = False  # sdpa training: the fused forward, the chunked backward

    @property
    def variant(self) -> str:
        """The backend with what is forced on it: ``sdpa [flash, split 8]``, ``chunked``."""
        return variant_label(self.backend, self.kernel, self.value_split, self.chunked_backward)


@dataclasses.dataclass
class Result(Case):
    """A case and what it measured."""

    status: str = "ok"  # "ok", "oom", "skipped" or "error"
    detail: str = ""
    ran_backend: str | None = None
    ran_plan: str | None = None  # the fused kernel's plan when sdpa ran
    probe: dict | None = None  # auto on CUDA: what its measurement timed (seconds per candidate)
    seconds: float | None = None
    repeats: int = 0
    peak_bytes: int | None = None
    memory_method: str = ""
    gflop: float = 0.0
    gflops: float | None = None


def map_shape(positions: int) -> tuple[int, int]:
    """A near-square ``H x W`` with ``H * W = positions`` (powers of two stay exact)."""
    height = 2 ** int(math.log2(positions) // 2)
    while positions % height:
        height -= 1
    return height, positions // height


def model_gflop(case: Case) -> float:
    """Matmul/convolution GFLOP of the case, as the bmm algorithm computes it."""
    n, c, b = case.positions, case.channels, case.batch
    if case.block == "pam":
        key_channels = c // 8
        projections = 2 * n * c * (2 * key_channels + c)
        attention = 2 * n * n * key_channels + 2 * n * n * c
    else:
        projections = 0
        attention = 2 * (2 * c * c * n)
    forward = b * (projections + attention)
    return (3 if case.mode == "train" else 1) * forward / 1e9


def estimated_peak_bytes(case: Case) -> int:
    """A generous estimate of the case's peak, to skip what cannot fit (CPU only)."""
    itemsize = 4
    if case.block == "pam" and case.backend == "bmm":
        matrices = 3 if case.mode == "train" else 2  # scores, probabilities, their gradient
        return matrices * case.batch * case.positions**2 * itemsize
    return 16 * case.batch * case.positions * case.channels * itemsize + 2**30


class DirectSDPA(torch.nn.Module):
    """PAM with its attention as one plain call of torch's memory-efficient kernel on q, k,
    v as the convolutions give them (the autocast dtype): the ``direct`` reference.

    Args:
        pam: the PAM whose convolutions and gamma it uses.
    """

    def __init__(self, pam: PAM) -> None:
        super().__init__()
        self.pam = pam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pam, (height, width) = self.pam, x.shape[-2:]
        query, key, value = (
            rearrange(conv(x), "b d h w -> b 1 (h w) d")
            for conv in (pam.query_conv, pam.key_conv, pam.value_conv)
        )
        with _sdpa.sdpa_kernel([_sdpa.SDPBackend.EFFICIENT_ATTENTION]):
            out = F.scaled_dot_product_attention(query, key, value, scale=1.0)
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=height, w=width)
        return x + pam.gamma * out


def build(case: Case) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The module, its input and the output gradient for a case."""
    device = torch.device(case.device)
    torch.manual_seed(0)  # every backend of a configuration sees the same weights and input
    if case.block == "pam":
        backend = "bmm" if case.backend in REFERENCES else case.backend
        module = PAM(
            case.channels, backend=backend, chunk_size=case.chunk_size, gamma_init=0.5,
            value_split=case.value_split,
        )  # fmt: skip
        if case.backend == "direct":
            module = DirectSDPA(module)
    else:
        module = CAM(case.channels, backend=case.backend, gamma_init=0.5)
    module = module.to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (case.batch, case.channels, case.height, case.width)
    x = torch.randn(shape, generator=gen, device=device) / math.sqrt(case.channels)
    x.requires_grad_(case.mode == "train")
    out_dtype = torch.float32 if case.dtype == "float32" else DTYPES[case.dtype]
    grad = torch.randn(shape, generator=gen, device=device).to(out_dtype)
    return module, x, grad


def run_case_once(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor, case: Case) -> None:
    autocast = (
        torch.autocast(x.device.type, dtype=DTYPES[case.dtype])
        if case.dtype != "float32"
        else contextlib.nullcontext()
    )
    with autocast, torch.set_grad_enabled(case.mode == "train"):
        out = module(x)
    if case.mode == "train":
        out.backward(grad.to(out.dtype))
        x.grad = None
        module.zero_grad(set_to_none=True)


@contextlib.contextmanager
def only_kernel(device_type: str, kernel: str | None) -> Iterator[None]:
    """Let the sdpa backend try only ``kernel`` on ``device_type`` (None: every kernel)."""
    saved = _sdpa.KERNELS_BY_DEVICE[device_type]
    if kernel is not None:
        _sdpa.KERNELS_BY_DEVICE[device_type] = (kernel,)
        _sdpa._PLANS.clear()
    try:
        yield
    finally:
        _sdpa.KERNELS_BY_DEVICE[device_type] = saved
        _sdpa._PLANS.clear()


def _ran(case: Case) -> tuple[str | None, str | None]:
    """The backend and (for sdpa) the plan that ran the case's last call."""
    if case.block != "pam":
        return "bmm", None
    if case.backend == "direct":
        return "direct", "efficient 1 head"
    ran = last_attention_backend()
    plan = _sdpa.last_sdpa_plan() if ran == "sdpa" else None
    return ran, None if plan is None else str(plan)


def _rejected(case: Case) -> bool:
    """Whether an sdpa variant did not run as forced (no fused kernel took it)."""
    forced = case.kernel is not None or case.value_split is not None or case.chunked_backward
    if case.backend != "sdpa" or not forced:
        return False
    plan = _sdpa.last_sdpa_plan()
    return last_attention_backend() != "sdpa" or (
        (case.kernel is not None and plan.kernel != case.kernel)
        or (case.value_split is not None and plan.parts != case.value_split)
    )


def measure_case(case: Case, repeats: int, long_case_seconds: float) -> dict:
    """Run one case in this process and measure it; a :class:`Result` as a dict."""
    result = Result(**dataclasses.asdict(case), gflop=model_gflop(case))
    device = torch.device(case.device)
    if case.value_path != "measured":  # preset what the rule would measure (this process only)
        for dtype in _precision.LOW_PRECISION_DTYPES:
            _precision._LOW_PRECISION_IS_FASTER[(device.type, dtype)] = case.value_path == "low"
    try:
        backward = _fused_forward.chunked_backward(case.chunked_backward)
        with only_kernel(device.type, case.kernel), backward, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a rejected variant's fallback warning
            # A small copy of the case first: code pages and library workspaces loaded on
            # first use would otherwise count as the case's memory.
            small = dataclasses.replace(case, height=min(case.height, 16),
                                        width=min(case.width, 16))  # fmt: skip
            run_case_once(*build(small), small)
            if _rejected(case):
                result.status, result.detail = "rejected", "no fused kernel takes this plan"
                return dataclasses.asdict(result)
            module, x, grad = build(case)
            if case.backend == "auto":  # its one-time measurement is not the case's time
                before = _autotune.probe_timings()
                run_case_once(module, x, grad, case)
                probed = _autotune.probe_timings()
                result.probe = next((probed[k] for k in probed if k not in before), None)
            measured = measure(lambda: run_case_once(module, x, grad, case), device, repeats,
                               long_case_seconds)  # fmt: skip
            if _rejected(case):
                result.status, result.detail = "rejected", "no fused kernel takes this plan"
                return dataclasses.asdict(result)
        result.seconds, result.repeats = measured.seconds, measured.repeats
        result.peak_bytes, result.memory_method = measured.peak_bytes, measured.memory_method
        result.gflops = result.gflop / result.seconds
        result.ran_backend, result.ran_plan = _ran(case)
    except (RuntimeError, torch.OutOfMemoryError) as error:
        reason = out_of_memory_reason(error)
        if reason is not None:
            result.status, result.detail = "oom", reason
        elif case.backend == "direct":  # no kernel for the direct call on this device
            result.status, result.detail = "rejected", str(error).splitlines()[0][:200]
        else:
            raise
    return dataclasses.asdict(result)


def measure_isolated(case: Case, repeats: int, long_case_seconds: float) -> Result:
    """Run a CPU case in a forked child, so that its peak memory is its own."""
    payload = run_forked(measure_case, case, repeats, long_case_seconds)
    if "error" in payload:
        status = "oom" if payload.get("killed") else "error"
        return Result(**dataclasses.asdict(case), status=status, detail=payload["error"][:300])
    return Result(**payload)


def _variants(block: str, backend: str, mode: str, args: argparse.Namespace) -> list[tuple]:
    """(chunk size, value split, kernel, chunked backward) of every case of one backend."""
    if block == "pam" and backend == "chunked":
        return [(chunk, None, None, False) for chunk in [None, *args.chunk_sizes]]
    if block == "pam" and backend == "sdpa":
        splits, kernels = [None, *args.value_splits], [None, *args.kernels]
        variants = [(None, split, kernel, False) for kernel in kernels for split in splits]
        if args.chunked_backward and mode == "train":
            variants += [(None, None, kernel, True) for kernel in kernels]
        return variants
    return [(None, None, None, False)]


def make_cases(args: argparse.Namespace) -> list[Case]:
    cases = []
    for block in args.blocks:
        valid = PAM_BACKENDS + REFERENCES if block == "pam" else CAM_BACKENDS
        backends = [b for b in args.backends if b in valid]
        for dtype in args.dtypes:
            for mode in args.modes:
                for backend in backends:
                    for chunk_size, split, kernel, chunked_backward in _variants(
                        block, backend, mode, args
                    ):
                        for positions in args.sizes:
                            height, width = map_shape(positions)
                            cases.append(
                                Case(block, backend, chunk_size, dtype, mode, positions, height,
                                     width, args.channels, args.batch, args.device,
                                     args.value_path, split, kernel, chunked_backward)
                            )  # fmt: skip
    return cases


def _progress_line(r: Result) -> str:
    shown = (
        f"{r.seconds * 1e3:9.1f} ms {mib(r.peak_bytes):>8} MiB"
        if r.status == "ok"
        else f"{r.status}: {r.detail}"
    )
    config = f"{r.block} {r.variant:7} chunk={r.chunk_size} {r.dtype:8} {r.mode:7}"
    return f"{config} N={r.positions:6} {shown}"


def markdown_table(results: list[Result], ceilings: dict[str, float], header: str) -> str:
    """One row per case, with time and memory relative to bmm of the same configuration."""
    bmm = {
        (r.block, r.dtype, r.mode, r.positions): r
        for r in results
        if r.backend == "bmm" and r.status == "ok"
    }
    lines = [
        header,
        "",
        "| block | backend | chunk | dtype | mode | N (H x W) | time (ms) | peak (MiB) "
        "| GFLOP/s | % ceiling | time / bmm | memory / bmm | status |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        ref = bmm.get((r.block, r.dtype, r.mode, r.positions))
        backend = r.variant
        if r.status == "ok" and r.backend in ("auto", "sdpa"):
            ran = r.ran_backend if r.backend == "auto" else ""
            if r.ran_plan:
                ran = f"{ran} ({r.ran_plan})" if ran else r.ran_plan
            backend += f" -> {ran}"
        if r.value_path != "measured" and r.dtype != "float32":
            backend += f" [{r.value_path} value path]"
        chunk = "-" if r.chunk_size is None else str(r.chunk_size)
        if r.status != "ok":
            cells = ["-"] * 6 + [f"{r.status}: {r.detail}".replace("|", "/")]
        else:
            ceiling = ceilings.get(r.dtype)
            time_ratio = f"{r.seconds / ref.seconds:.2f}" if ref else "-"
            memory_ratio = f"{r.peak_bytes / ref.peak_bytes:.3f}" if ref and ref.peak_bytes else "-"
            cells = [
                f"{r.seconds * 1e3:,.1f}",
                mib(r.peak_bytes),
                f"{r.gflops:,.1f}",
                f"{100 * r.gflops / ceiling:.0f}" if ceiling else "-",
                time_ratio,
                memory_ratio,
                "ok",
            ]
        row = [r.block, backend, chunk, r.dtype, r.mode, f"{r.positions} ({r.height}x{r.width})"]
        lines.append("| " + " | ".join(row + cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[Result], out_dir: Path, stem: str) -> list[Path]:
    """Time and peak memory vs N per (block, mode, dtype), one line per backend."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    paths = []
    groups = sorted({(r.block, r.mode, r.dtype) for r in results})
    for block, mode, dtype in groups:
        fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
        members = [r for r in results if (r.block, r.mode, r.dtype) == (block, mode, dtype)]
        lines = sorted({(r.variant, r.chunk_size or 0) for r in members})
        for variant, chunk in lines:
            ok = [
                r
                for r in members
                if (r.variant, r.chunk_size or 0) == (variant, chunk) and r.status == "ok"
            ]
            if not ok:
                continue
            label = variant if not chunk else f"{variant} (chunk {chunk})"
            n = [r.positions for r in ok]
            ax_time.plot(n, [r.seconds for r in ok], marker="o", label=label)
            ax_mem.plot(n, [r.peak_bytes / 2**20 for r in ok], marker="o", label=label)
        for ax, ylabel in ((ax_time, "time (s)"), (ax_mem, "peak memory (MiB)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("positions N = H x W")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        ax_time.legend(fontsize=8)
        fig.suptitle(
            f"{block.upper()} {mode}, {dtype}, C={members[0].channels}, B={members[0].batch}"
        )
        fig.tight_layout()
        path = out_dir / f"{stem}-{block}-{mode}-{dtype}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def default_stem(device: str) -> str:
    """``attention-<device tag>-torch<major.minor>``, e.g. ``attention-cpu-xeon2c-torch2.14``."""
    return f"attention-{device_tag(device)}-{torch_tag()}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda when there is one)")  # fmt: skip
    add("--blocks", nargs="+", default=["pam", "cam"], choices=["pam", "cam"],
        help="the blocks to time: PAM (position) and/or CAM (channel)")  # fmt: skip
    add("--backends", nargs="+", default=list(PAM_BACKENDS), choices=PAM_BACKENDS + REFERENCES,
        help="backends to run (CAM runs only bmm and auto); 'direct': the reference call of "
             "torch's memory-efficient kernel")  # fmt: skip
    add("--value-splits", nargs="*", type=int, default=[],
        help="extra sdpa cases with the value width forced into this many parts")  # fmt: skip
    add(
        "--kernels",
        nargs="*",
        default=[],
        choices=["flash", "efficient", "cudnn"],
        help="extra sdpa cases forced onto each of these fused kernels (with each split)",
    )
    add("--chunked-backward", action="store_true",
        help="extra sdpa training cases: the fused forward with the chunked backward (the "
             "dispatch's plan and each of --kernels)")  # fmt: skip
    add("--chunk-sizes", nargs="*", type=int, default=[256, 1024],
        help="explicit chunk sizes for the chunked backend, besides its default")  # fmt: skip
    add("--sizes", nargs="+", type=int, default=FULL_SIZES, help="numbers of positions N")
    add("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES),
        help="float32, or autocast to float16/bfloat16")  # fmt: skip
    add("--modes", nargs="+", default=["forward", "train"], choices=["forward", "train"],
        help="forward only, and/or forward + backward (train)")  # fmt: skip
    add("--value-path", default="measured", choices=["measured", "low", "float32"],
        help="value path of chunked/sdpa under autocast: the package's rule (measured), or "
             "forced to the low-precision dtype or to float32")  # fmt: skip
    add("--channels", type=int, default=512, help="channels C of the feature map")
    add("--batch", type=int, default=1, help="images per batch")
    add("--repeats", type=int, default=3, help="timed runs per case (the median is reported)")
    add("--long-case-seconds", type=float, default=5.0,
        help="a case whose warm-up takes longer is timed by that one run")  # fmt: skip
    add("--give-up-seconds", type=float, default=150.0,
        help="skip larger N for a configuration once a case took longer")  # fmt: skip
    add("--quick", action="store_true",
        help="small sizes, float32, default chunks: a smoke test (minutes on a CPU)")  # fmt: skip
    add("--out", type=Path, default=default_out_dir(),
        help="default runs/benchmarks; the committed tables: benchmarks/results")  # fmt: skip
    add("--stem", help="output file name stem (default: from device and torch version)")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    if args.device == "cpu":
        configure_malloc()
    started = time.perf_counter()
    name = f"{device_name(args.device)}; {low_precision_note(args.device)}"
    print(f"device: {name}; torch {torch.__version__}")
    # The matmul ceilings are measured after the cases (minutes for bfloat16 on a CPU
    # without bfloat16 units): a run stopped midway has its rows already.
    ceilings: dict[str, float] = {}
    free = free_memory_bytes() if args.device == "cpu" else None
    results: list[Result] = []
    given_up: dict[tuple, str] = {}
    cases = make_cases(args)
    stem = args.stem or default_stem(args.device) + ("-quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    for case in cases:
        config = (case.block, case.backend, case.chunk_size, case.dtype, case.mode)
        if config in given_up:
            result = Result(**dataclasses.asdict(case), status="skipped", detail=given_up[config])
        elif free is not None and estimated_peak_bytes(case) > 0.9 * free:
            need = estimated_peak_bytes(case) / 2**30
            detail = f"needs ~{need:.0f} GiB, {free / 2**30:.0f} GiB free"
            result = Result(**dataclasses.asdict(case), status="oom", detail=detail)
        elif args.device == "cpu":
            result = measure_isolated(case, args.repeats, args.long_case_seconds)
        else:
            result = Result(**measure_case(case, args.repeats, args.long_case_seconds))
            torch.cuda.empty_cache()
        if result.status == "ok" and result.seconds > args.give_up_seconds:
            given_up[config] = f"N={case.positions} took {result.seconds:.0f} s"
        if result.status == "oom":
            given_up[config] = f"out of memory at N={case.positions}"
        results.append(result)
        print(_progress_line(result), flush=True)
        # Rewritten after every case: a run stopped midway keeps what it measured.
        write_tables(args, argv, stem, name, ceilings, results, len(cases), started)

    ceilings = measure_ceilings(args.device, args.dtypes)
    print("matmul ceiling (GFLOP/s): " + ", ".join(f"{k} {v:,.0f}" for k, v in ceilings.items()))
    table = write_tables(args, argv, stem, name, ceilings, results, len(cases), started)
    plots = plot(results, args.out, stem)
    print()
    print(table)
    print(f"wrote {args.out / stem}.json, .md and {len(plots)} plots in "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    return results


def write_tables(
    args: argparse.Namespace,
    argv: list[str] | None,
    stem: str,
    name: str,
    ceilings: dict[str, float],
    results: list[Result],
    planned: int,
    started: float,
) -> str:
    """Write ``<stem>.json`` and ``<stem>.md`` for the cases measured so far; the table.

    Args:
        args: the command line.
        argv: the arguments as given (None: ``sys.argv``).
        stem: the file names' stem.
        name: the device, in words.
        ceilings: matmul ceilings per dtype.
        results: the cases measured so far.
        planned: how many cases the run has.
        started: ``time.perf_counter()`` at the start.
    """
    duration = time.perf_counter() - started
    progress = "" if len(results) == planned else f" (partial: {len(results)} of {planned} cases)"
    header = (
        f"Device: {name}; torch {torch.__version__}; C={args.channels}, B={args.batch}; "
        f"matmul ceiling (GFLOP/s): "
        + (", ".join(f"{k} {v:,.0f}" for k, v in ceilings.items()) or "not yet measured")
        + f"; memory: {results[0].memory_method if results else '-'}; run took {duration:.0f} s"
        + f"{progress}."
    )  # fmt: skip
    table = markdown_table(results, ceilings, header)
    payload = {
        "device": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "seconds": duration,
        "planned_cases": planned,
        "ceiling_gflops": ceilings,
        "cases": [dataclasses.asdict(r) for r in results],
    }
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    (args.out / f"{stem}.md").write_text(table)
    return table


if __name__ == "__main__":
    main()

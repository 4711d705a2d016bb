"""Benchmark the spatial blocks against mmcv's implementations and the N x N computation.

Side by side in one run, on the same input and weights draw:

- ``ours``: attnblocks' ``CrissCrossAttention``, ``NonLocal2d`` (default backend
  ``"auto"``) and ``ContextBlock``;
- ``nxn``: the same function through the full ``N x N`` attention matrix
  (``NonLocal2d(backend="bmm")``; for criss-cross the ``N x N`` energies masked to each
  pixel's row and column);
- ``mmcv``: mmcv 2.1.0's pure-PyTorch modules (``mmcv.ops.CrissCrossAttention``,
  ``mmcv.cnn.NonLocal2d``, ``mmcv.cnn.ContextBlock``) when mmcv is importable, i.e.
  when this script runs in a separate environment with ``mmcv-lite==2.1.0`` and
  mmengine (mmcv is never a dependency of attnblocks). ``mmcv/ops/cc_attention.py`` is
  loaded by path, so ``mmcv.ops`` never loads its compiled extension.

Measurement (``benchmarks/harness.py``): the median of ``--repeats`` runs after a
warm-up (a case whose warm-up takes longer than ``--long-case-seconds`` is timed by
that run); peak memory above the inputs and module, as the resident-set high-water
mark of a forked child per case, which may allocate at most ``--memory-cap-gib``
beyond its start (a case needing more is reported ``oom``, with the N x N matrices'
size). ``train`` is forward + backward of ``(out * grad).sum()``.

Example (the committed tables; ``mmcv-env`` is a virtual environment with this package's
requirements, ``mmcv-lite==2.1.0`` and mmengine, and ``PYTHONPATH=.`` finds attnblocks)::

    PYTHONPATH=. mmcv-env/bin/python benchmarks/bench_blocks.py --out benchmarks/results
    python benchmarks/bench_blocks.py --quick   # without mmcv, small maps
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared harness, run as a script

from harness import (
    capped_child_result,
    configure_malloc,
    default_out_dir,
    device_name,
    device_tag,
    free_memory_bytes,
    measure,
    mib,
    run_forked,
    torch_tag,
)

from attnblocks import ContextBlock, CrissCrossAttention, NonLocal2d

IMPLEMENTATIONS = ("ours", "nxn", "mmcv")
# Global context pools once (no N x N form); for non-local's dot product and concatenation
# the N x N computation is mmcv's own.
NO_NXN_FORM = ("context", "non_local_dot_product", "non_local_concatenation")


@dataclasses.dataclass
class Case:
    """One benchmark configuration."""

    block: str  # "criss_cross", "non_local_<mode>" or "context"
    implementation: str  # "ours", "nxn" or "mmcv"
    mode: str  # "forward" or "train"
    height: int
    width: int
    channels: int
    batch: int


@dataclasses.dataclass
class Result(Case):
    """A case and what it measured."""

    status: str = "ok"  # "ok", "oom", "skipped" or "error"
    detail: str = ""
    seconds: float | None = None
    repeats: int = 0
    peak_bytes: int | None = None


# The suite: (block, sizes, modes, channels). NLHead/CCHead work on 512 channels after
# their first 3x3 conv; non-local reduces to 256 inside.
SUITE = [
    ("criss_cross", [(64, 128), (128, 256)], ["forward", "train"], 512),
    ("non_local_embedded_gaussian", [(32, 64), (64, 128), (128, 256)], ["train"], 512),
    ("non_local_dot_product", [(64, 128)], ["forward", "train"], 512),
    ("non_local_concatenation", [(16, 32), (32, 64)], ["forward", "train"], 512),
    ("context", [(64, 128), (128, 256)], ["train"], 512),
]
QUICK = [
    ("criss_cross", [(16, 24)], ["train"], 32),
    ("non_local_embedded_gaussian", [(16, 24)], ["train"], 32),
    ("context", [(16, 24)], ["train"], 32),
]


def load_mmcv() -> dict[str, type] | None:
    """mmcv's three block classes, or None when mmcv is not installed here."""
    try:
        import mmcv.cnn
    except ImportError:
        return None
    # cc_attention.py by path: importing mmcv.ops would load mmcv's compiled extension.
    path = Path(mmcv.__file__).parent / "ops" / "cc_attention.py"
    spec = importlib.util.spec_from_file_location("mmcv_cc_attention", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {
        "criss_cross": module.CrissCrossAttention,
        "non_local": mmcv.cnn.NonLocal2d,
        "context": mmcv.cnn.ContextBlock,
    }


class DenseCrissCross(CrissCrossAttention):
    """Criss-cross attention through the N x N matrix, energies outside the cross at -inf."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        query, key = (t.flatten(2) for t in self._query_key(x))  # (B, D, N)
        value = self.value_conv(x).flatten(2)  # (B, C, N)
        rows = torch.arange(height).repeat_interleave(width)
        cols = torch.arange(width).repeat(height)
        same_row = rows[:, None] == rows[None]
        same_col = (cols[:, None] == cols[None]) & ~torch.eye(len(rows), dtype=torch.bool)
        energy = torch.bmm(query.transpose(1, 2), key)  # (B, N, N)
        energy = energy.masked_fill(~(same_row | same_col), float("-inf"))
        attended = torch.bmm(value, energy.softmax(dim=-1).transpose(1, 2))
        return x + self.gamma * attended.view(batch, channels, height, width)


def build_module(case: Case, mmcv: dict[str, type] | None) -> torch.nn.Module:
    """The module of a case, all parameters drawn from one seed."""
    torch.manual_seed(0)
    channels = case.channels
    if case.block == "criss_cross":
        if case.implementation == "mmcv":
            module = mmcv["criss_cross"](channels)
        else:
            module = (DenseCrissCross if case.implementation == "nxn" else CrissCrossAttention)(
                channels
            )
    elif case.block.startswith("non_local"):
        mode = case.block.removeprefix("non_local_")
        if case.implementation == "mmcv":
            module = mmcv["non_local"](channels, reduction=2, mode=mode, use_scale=True)
        else:
            backend = "bmm" if case.implementation == "nxn" else "auto"
            module = NonLocal2d(channels, mode=mode, backend=backend)
    elif case.implementation == "mmcv":
        module = mmcv["context"](channels, ratio=1 / 4)
    else:
        module = ContextBlock(channels)
    with torch.no_grad():  # non-zero everywhere, so that every path does its work
        for param in module.parameters():
            param.normal_(0, 0.05)
    return module


def run_case_once(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor, mode: str) -> None:
    with torch.set_grad_enabled(mode == "train"):
        out = module(x)
    if mode == "train":
        out.backward(grad)
        x.grad = None
        module.zero_grad(set_to_none=True)


def measure_case(case: Case, repeats: int, long_case_seconds: float) -> dict:
    """Run one case in this process and measure it; a :class:`Result` as a dict."""
    mmcv = load_mmcv() if case.implementation == "mmcv" else None
    # A small copy first: code pages and library workspaces loaded on first use would
    # otherwise count as the case's memory.
    small = dataclasses.replace(case, height=min(case.height, 8), width=min(case.width, 8))
    for config in (small, case):
        module = build_module(config, mmcv)
        gen = torch.Generator().manual_seed(0)
        shape = (config.batch, config.channels, config.height, config.width)
        x = torch.randn(shape, generator=gen).requires_grad_(config.mode == "train")
        grad = torch.randn(shape, generator=gen)
        if config is small:
            run_case_once(module, x, grad, config.mode)
    measured = measure(lambda: run_case_once(module, x, grad, case.mode), torch.device("cpu"),
                       repeats, long_case_seconds)  # fmt: skip
    result = Result(**dataclasses.asdict(case), seconds=measured.seconds)
    result.repeats, result.peak_bytes = measured.repeats, measured.peak_bytes
    return dataclasses.asdict(result)


def nxn_size(case: Case) -> str:
    """What the N x N computation of a case holds at once, in words."""
    matrix = case.batch * (case.height * case.width) ** 2 * 4
    if case.block == "non_local_concatenation":  # mmcv concatenates (B, 2C', N, N) features
        features = matrix * case.channels  # 2 * (C / 2) channels
        return f"its (B, 2C', N, N) concatenated features are {features / 2**30:.1f} GiB"
    if case.batch == 1:
        return f"one N x N matrix is {matrix / 2**30:.1f} GiB"
    return f"the batch's {case.batch} N x N matrices are {matrix / 2**30:.1f} GiB"


def measure_isolated(case: Case, args: argparse.Namespace) -> Result:
    """Run a case in a forked child under the memory cap, so its peak memory is its own."""
    cap = int(args.memory_cap_gib * 2**30)
    payload = run_forked(measure_case, case, args.repeats, args.long_case_seconds, memory_cap=cap)
    return capped_child_result(payload, case, Result, args.memory_cap_gib, nxn_size(case))


def make_cases(args: argparse.Namespace) -> list[Case]:
    suite = QUICK if args.quick else SUITE
    cases = []
    for block, sizes, modes, channels in suite:
        if args.blocks and block not in args.blocks:
            continue
        for mode in modes:
            for height, width in sizes:
                for implementation in args.implementations:
                    if implementation == "nxn" and block in NO_NXN_FORM:
                        continue
                    cases.append(Case(block, implementation, mode, height, width, channels,
                                      args.batch))  # fmt: skip
    return cases


def markdown_table(results: list[Result], header: str) -> str:
    """One row per case, time and memory relative to ours in the same configuration."""
    ours = {
        (r.block, r.mode, r.height, r.width): r
        for r in results
        if r.implementation == "ours" and r.status == "ok"
    }
    lines = [
        header,
        "",
        "| block | mode | H x W (N) | C | implementation | time (ms) | peak (MiB) "
        "| time / ours | memory / ours | status |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        ref = ours.get((r.block, r.mode, r.height, r.width))
        size = f"{r.height} x {r.width} ({r.height * r.width})"
        if r.status == "ok":
            cells = [
                f"{r.seconds * 1e3:,.0f}",
                mib(r.peak_bytes),
                f"{r.seconds / ref.seconds:.2f}" if ref else "-",
                f"{r.peak_bytes / ref.peak_bytes:.2f}" if ref and ref.peak_bytes else "-",
                "ok",
            ]
        else:
            cells = ["-", "-", "-", "-", f"{r.status}: {r.detail}".replace("|", "/")]
        row = [r.block, r.mode, size, str(r.channels), r.implementation, *cells]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--blocks", nargs="*", help="only these blocks of the suite (criss_cross, context, ...)")
    add("--implementations", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS,
        help="whose blocks: this package's, mmcv's (if installed), the N x N one")  # fmt: skip
    add("--batch", type=int, default=1, help="images per batch")
    add("--repeats", type=int, default=3, help="timed runs per case (the median is reported)")
    add("--long-case-seconds", type=float, default=5.0,
        help="a case whose warm-up takes longer is timed by that one run")  # fmt: skip
    add("--memory-cap-gib", type=float, default=3.0,
        help="memory a case may allocate beyond its start; more is reported as oom")  # fmt: skip
    add("--quick", action="store_true", help="small maps and channels, in well under a minute")
    add("--out", type=Path, default=default_out_dir(),
        help="default runs/benchmarks; the committed tables: benchmarks/results")  # fmt: skip
    add("--stem", help="output file name stem (default: from device and torch version)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    configure_malloc()
    started = time.perf_counter()
    mmcv_version = None
    if "mmcv" in args.implementations:
        mmcv_version = run_forked(_mmcv_version).get("version")
        if mmcv_version is None:
            print("mmcv is not installed here: its cases are skipped (see the module docstring)")
    name = device_name("cpu")
    print(f"device: {name}; torch {torch.__version__}; mmcv {mmcv_version or '-'}")
    print(f"free memory: {free_memory_bytes() / 2**30:.1f} GiB")
    results = []
    for case in make_cases(args):
        if case.implementation == "mmcv" and mmcv_version is None:
            result = Result(**dataclasses.asdict(case), status="skipped",
                            detail="mmcv not installed")  # fmt: skip
        elif (case.implementation == "mmcv" and case.block == "non_local_concatenation"
              and case.mode == "train"):  # fmt: skip
            result = Result(**dataclasses.asdict(case), status="skipped",
                            detail="mmcv's concatenation mode cannot run backward")  # fmt: skip
        else:
            result = measure_isolated(case, args)
        results.append(result)
        shown = (f"{result.seconds * 1e3:10.0f} ms {mib(result.peak_bytes):>8} MiB"
                 if result.status == "ok" else f"{result.status}: {result.detail}")  # fmt: skip
        print(f"{case.block:28} {case.mode:7} {case.height:4}x{case.width:<4} "
              f"{case.implementation:5} {shown}", flush=True)  # fmt: skip
    duration = time.perf_counter() - started
    header = (
        f"Device: {name}; torch {torch.__version__}; mmcv {mmcv_version or '-'}; "
        f"B={args.batch}, float32; memory: peak resident set of a forked process per case "
        f"(cap {args.memory_cap_gib:g} GiB); run took {duration:.0f} s."
    )
    table = markdown_table(results, header)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.stem or f"blocks-{device_tag('cpu')}-{torch_tag()}"
    stem += "-quick" if args.quick and not args.stem else ""
    payload = {
        "device": name,
        "torch": torch.__version__,
        "mmcv": mmcv_version,
        "python": platform.python_version(),
        "command": " ".join(["bench_blocks.py", *(argv if argv is not None else sys.argv[1:])]),
        "seconds": duration,
        "cases": [dataclasses.asdict(r) for r in results],
    }
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    (args.out / f"{stem}.md").write_text(table)
    print()
    print(table)
    print(f"wrote {args.out / stem}.json and .md in {duration:.0f} s")
    return results


def _mmcv_version() -> dict:
    """mmcv's version where it and its three blocks load, else nothing (run in a child)."""
    try:
        load_mmcv()
        import mmcv
    except ImportError:
        return {}
    return {"version": mmcv.__version__}


if __name__ == "__main__":
    main()

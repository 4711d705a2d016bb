"""Whole-image inference of NLNet and DNLNet: time and peak memory, default backend vs N x N.

mmseg's non-local heads build the ``N x N`` attention matrix; at its Cityscapes test size,
a whole 1024 x 2048 image, the features at output stride 8 have ``N = 128 * 256 = 32768``
positions, and the matrix and its softmax take 4 GiB each (mmseg issue 99: out of memory
at test time). Side by side in one run, for each model and image size:

- ``ours``: :class:`attnblocks.models.NLNet` / ``DNLNet`` with the default
  ``attention_backend="auto"`` (on CPU the ``"chunked"`` backend at these sizes: no
  ``N x N`` matrix);
- ``nxn``: the same model and weights with ``attention_backend="bmm"``, the full matrix as
  mmseg computes it. Where its two ``N x N`` float32 matrices alone take
  ``--nxn-limit-gib`` (8) or more it is not run (the table says what they would hold).

Both on ResNetV1c-50 (timm's ``resnet50c``), 19 classes, random weights (no download),
batch 1, float32, under ``torch.inference_mode``. Measurement (``benchmarks/harness.py``):
one run after a warm-up on a small image (a case taking longer than
``--long-case-seconds`` is timed by that one run); peak memory above the built model and
input, as the resident-set high-water mark of a forked child per case, which may allocate
at most ``--memory-cap-gib`` (a case needing more is reported ``oom``).

Example (the committed table: the N x N model run at 1024 x 2048 too, on a machine with
more than 14 GiB free)::

    python benchmarks/bench_nonlocal_models.py --out benchmarks/results --nxn-limit-gib 16 \
        --memory-cap-gib 14 --note "other jobs shared the machine"
    python benchmarks/bench_nonlocal_models.py --quick   # small images, resnet18, a minute
"""

from __future__ import annotations

import argparse
import dataclasses
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

from attnblocks.models import DNLNet, NLNet

MODELS = {"nlnet": NLNet, "dnlnet": DNLNet}
IMPLEMENTATIONS = {"ours": "auto", "nxn": "bmm"}  # -> attention_backend
SIZES = [(512, 1024), (1024, 2048)]
QUICK_SIZES = [(64, 128)]


@dataclasses.dataclass
class Case:
    """One benchmark configuration."""

    model: str  # "nlnet" or "dnlnet"
    implementation: str  # "ours" or "nxn"
    height: int
    width: int
    backbone: str
    output_stride: int = 8

    @property
    def positions(self) -> int:
        """``N``: positions of the attention (the features at the output stride)."""
        stride = self.output_stride
        return -(-self.height // stride) * -(-self.width // stride)

    @property
    def nxn_bytes(self) -> int:
        """What the N x N computation holds at once: the energies and their softmax."""
        return 2 * self.positions**2 * 4


@dataclasses.dataclass
class Result(Case):
    """A case and what it measured."""

    status: str = "ok"  # "ok", "oom", "skipped" or "error"
    detail: str = ""
    seconds: float | None = None
    peak_bytes: int | None = None
    backend: str = ""  # the backend the attention ran on


def build_model(case: Case) -> torch.nn.Module:
    """The case's model, weights drawn from one seed, in eval mode."""
    torch.manual_seed(0)
    model = MODELS[case.model](
        case.backbone, num_classes=19, output_stride=case.output_stride,
        attention_backend=IMPLEMENTATIONS[case.implementation],
    ).eval()  # fmt: skip
    with torch.no_grad():  # the blocks start as the identity: make the attention count
        for param in model.head.attention.parameters():
            param.normal_(0, 0.05)
    return model


def image(height: int, width: int) -> torch.Tensor:
    """A ``(1, 3, H, W)`` image of normalised values."""
    return torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))


def measure_case(case: Case, long_case_seconds: float) -> dict:
    """Run one case in this process and measure it; a :class:`Result` as a dict."""
    from attnblocks.functional import last_attention_backend

    # A small image first: code pages and library workspaces loaded on first use would
    # otherwise count as the case's memory.
    model = build_model(case)
    with torch.inference_mode():
        model(image(64, 64))
    images = image(case.height, case.width)

    def run() -> None:
        with torch.inference_mode():
            model(images)

    measured = measure(run, torch.device("cpu"), 1, long_case_seconds)
    backend = last_attention_backend() or ""
    result = Result(**dataclasses.asdict(case), seconds=measured.seconds,
                    peak_bytes=measured.peak_bytes, backend=backend)  # fmt: skip
    return dataclasses.asdict(result)


def measure_isolated(case: Case, args: argparse.Namespace) -> Result:
    """Run a case in a forked child under the memory cap, so its peak memory is its own."""
    if case.implementation == "nxn" and case.nxn_bytes >= args.nxn_limit_gib * 2**30:
        return Result(**dataclasses.asdict(case), status="skipped",
                      detail=f"not run: its two N x N matrices take "
                             f"{case.nxn_bytes / 2**30:.0f} GiB")  # fmt: skip
    cap = int(args.memory_cap_gib * 2**30)
    payload = run_forked(measure_case, case, args.long_case_seconds, memory_cap=cap)
    return capped_child_result(payload, case, Result, args.memory_cap_gib)


def make_cases(args: argparse.Namespace) -> list[Case]:
    sizes = QUICK_SIZES if args.quick else SIZES
    return [
        Case(model, implementation, height, width, args.backbone)
        for model in args.models
        for height, width in sizes
        for implementation in IMPLEMENTATIONS
    ]


def markdown_table(results: list[Result], header: str) -> str:
    """One row per case, time and memory relative to ours in the same configuration."""
    ours = {
        (r.model, r.height, r.width): r
        for r in results
        if r.implementation == "ours" and r.status == "ok"
    }
    lines = [
        header,
        "",
        "| model | image H x W | N | implementation | attention backend | time (s) "
        "| peak (MiB) | memory / ours | status |",
        "|---|---|---:|---|---|---:|---:|---:|---|",
    ]
    for r in results:
        ref = ours.get((r.model, r.height, r.width))
        if r.status == "ok":
            ratio = f"{r.peak_bytes / ref.peak_bytes:.2f}" if ref and ref.peak_bytes else "-"
            cells = [r.backend, f"{r.seconds:,.1f}", mib(r.peak_bytes), ratio, "ok"]
        else:
            cells = ["-", "-", "-", "-", f"{r.status}: {r.detail}".replace("|", "/")]
        row = [r.model, f"{r.height} x {r.width}", f"{r.positions:,}", r.implementation, *cells]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    add("--backbone", default="resnet50c", help="timm backbone (mmseg's ResNetV1c-50)")
    add("--long-case-seconds", type=float, default=5.0,
        help="a case whose warm-up takes longer is timed by that one run")  # fmt: skip
    add("--memory-cap-gib", type=float, default=12.0,
        help="memory a case may allocate beyond its start; more is reported as oom")  # fmt: skip
    add("--nxn-limit-gib", type=float, default=8.0,
        help="N x N cases whose two matrices take this much or more are not run")  # fmt: skip
    add("--quick", action="store_true", help="small images (add --backbone resnet18)")
    add("--note", default="", help="a sentence for the table's header (what else ran...)")
    add("--out", type=Path, default=default_out_dir(),
        help="default runs/benchmarks; the committed tables: benchmarks/results")  # fmt: skip
    add("--stem", help="output file name stem (default: from device and torch version)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    configure_malloc()
    started = time.perf_counter()
    name = device_name("cpu")
    print(f"device: {name}; torch {torch.__version__}")
    print(f"free memory: {free_memory_bytes() / 2**30:.1f} GiB")
    results = []
    for case in make_cases(args):
        result = measure_isolated(case, args)
        results.append(result)
        shown = (f"{result.seconds:8.1f} s {mib(result.peak_bytes):>8} MiB ({result.backend})"
                 if result.status == "ok" else f"{result.status}: {result.detail}")  # fmt: skip
        print(f"{case.model:7} {case.height:5}x{case.width:<5} {case.implementation:5} {shown}",
              flush=True)  # fmt: skip
    duration = time.perf_counter() - started
    header = (
        f"Device: {name}; torch {torch.__version__}; {args.backbone}, 19 classes, output "
        f"stride 8, batch 1, float32, torch.inference_mode; memory: peak resident set of a "
        f"forked process per case above the built model and input (cap "
        f"{args.memory_cap_gib:g} GiB); run took {duration:.0f} s."
        + (f" Note: {args.note}." if args.note else "")
    )
    table = markdown_table(results, header)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.stem or f"nonlocal-models-{device_tag('cpu')}-{torch_tag()}"
    stem += "-quick" if args.quick and not args.stem else ""
    payload = {
        "device": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": " ".join(
            ["bench_nonlocal_models.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "seconds": duration,
        "cases": [dataclasses.asdict(r) for r in results],
    }
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    (args.out / f"{stem}.md").write_text(table)
    print()
    print(table)
    print(f"wrote {args.out / stem}.json and .md in {duration:.0f} s")
    return results


if __name__ == "__main__":
    main()

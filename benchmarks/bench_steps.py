"""Benchmark whole training steps of DANet and CCNet: time and peak memory per backend.

One training step = forward at the crop size, the model's loss (DANet: cross-entropy on
its three outputs, :class:`attnblocks.losses.DANetLoss`; CCNet: cross-entropy), backward
and an SGD step, on a dilated ResNet (output stride 8, random weights, 19 classes), in
float32 or under autocast. DANet runs once per PAM backend (``--backends``); CCNet's
criss-cross attention has one implementation. Measurement as in
``benchmarks/harness.py``: the median of ``--repeats`` steps after a warm-up step
(CUDA events; CPU ``perf_counter``), peak memory beyond the model, its optimizer state
and the batch (CUDA ``max_memory_allocated``; CPU the high-water mark of a forked process
per case). ``auto`` runs one untimed step first, so that its one-time measurement on
CUDA is neither timed nor counted as memory.

    python benchmarks/bench_steps.py --device cuda --sizes 769x769 1024x2048 --batch 2
    python benchmarks/bench_steps.py --quick      # resnet18 at 128 x 128 on CPU
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared harness, run as a script

from harness import (
    DTYPES,
    configure_malloc,
    default_out_dir,
    device_name,
    device_tag,
    measure,
    measure_on_device,
    mib,
    out_of_memory_reason,
    torch_tag,
)

from attnblocks.functional import last_attention_backend
from attnblocks.losses import DANetLoss, SegmentationCrossEntropy
from attnblocks.models import CCNet, DANet

MODELS = ("danet", "ccnet")
BACKENDS = ("bmm", "chunked", "sdpa", "auto")
QUICK = dict(backbones=["resnet18"], sizes=[(128, 128)], repeats=1, dtypes=["float32"])


@dataclasses.dataclass
class Case:
    """One configuration (``backend`` is "-" for CCNet)."""

    model: str
    backbone: str
    backend: str
    dtype: str
    height: int
    width: int
    batch: int
    device: str


@dataclasses.dataclass
class Result(Case):
    """A case and what it measured."""

    status: str = "ok"
    detail: str = ""
    ran_backend: str | None = None
    seconds: float | None = None
    repeats: int = 0
    images_per_second: float | None = None
    peak_bytes: int | None = None
    memory_method: str = ""


def build(case: Case) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model in training mode, its loss, a batch of images and labels for ``case``."""
    torch.manual_seed(0)
    device = torch.device(case.device)
    if case.model == "danet":
        model = DANet(case.backbone, num_classes=19, output_stride=8,
                      attention_backend=case.backend)  # fmt: skip
        criterion = DANetLoss()
    else:
        model = CCNet(case.backbone, num_classes=19, output_stride=8)
        criterion = SegmentationCrossEntropy()
    model = model.to(device).train()
    images = torch.randn(case.batch, 3, case.height, case.width, device=device)
    labels = torch.randint(0, 19, (case.batch, case.height, case.width), device=device)
    return model, criterion, images, labels


def step_fn(
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    case: Case,
) -> Callable[[], None]:
    """One training step (forward, loss, backward, SGD step) as a callable."""
    autocast = (
        torch.autocast(images.device.type, dtype=DTYPES[case.dtype])
        if case.dtype != "float32"
        else contextlib.nullcontext()
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step() -> None:
        with autocast:
            loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return train_step


def measure_case(case: Case, repeats: int, long_case_seconds: float) -> dict:
    """Run one case in this process and measure it; a :class:`Result` as a dict."""
    result = Result(**dataclasses.asdict(case))
    try:
        small = dataclasses.replace(case, height=64, width=64)  # loads code and workspaces
        step_fn(*build(small), small)()
        step = step_fn(*build(case), case)
        if case.backend == "auto":
            step()  # auto's one-time measurement on CUDA happens here, untimed
        measured = measure(step, torch.device(case.device), repeats, long_case_seconds)
        result.seconds, result.repeats = measured.seconds, measured.repeats
        result.peak_bytes, result.memory_method = measured.peak_bytes, measured.memory_method
        result.images_per_second = case.batch / measured.seconds
        result.ran_backend = last_attention_backend() if case.model == "danet" else "-"
    except (RuntimeError, torch.OutOfMemoryError) as error:
        reason = out_of_memory_reason(error)
        if reason is None:
            raise
        result.status, result.detail = "oom", reason
    return dataclasses.asdict(result)


def run_case(case: Case, repeats: int, long_case_seconds: float) -> Result:
    """Measure a case: in this process on CUDA, in a forked child (its own peak) on CPU."""
    return measure_on_device(measure_case, case, Result, repeats, long_case_seconds)


def make_cases(args: argparse.Namespace) -> list[Case]:
    """Every (model, backbone, dtype, backend, size) asked for; CCNet without backends."""
    cases = []
    for model in args.models:
        backends = args.backends if model == "danet" else ["-"]
        for backbone in args.backbones:
            for dtype in args.dtypes:
                for backend in backends:
                    for height, width in sorted(args.sizes, key=lambda s: s[0] * s[1]):
                        cases.append(Case(model, backbone, backend, dtype, height, width,
                                          args.batch, args.device))  # fmt: skip
    return cases


def markdown(results: list[Result], header: str) -> str:
    """One row per case, with time and memory relative to DANet's bmm of the same setting."""
    bmm = {
        (r.backbone, r.dtype, r.height, r.width): r
        for r in results
        if r.model == "danet" and r.backend == "bmm" and r.status == "ok"
    }
    lines = [
        header,
        "",
        "| model | backbone | dtype | image (H x W) | backend | step (s) | images/s | peak (MiB) "
        "| time / DANet bmm | memory / DANet bmm | status |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        backend = f"auto -> {r.ran_backend or '?'}" if r.backend == "auto" else r.backend
        ref = bmm.get((r.backbone, r.dtype, r.height, r.width))
        if r.status == "ok":
            cells = [
                f"{r.seconds:.3f}",
                f"{r.images_per_second:.2f}",
                mib(r.peak_bytes),
                f"{r.seconds / ref.seconds:.2f}" if ref else "-",
                f"{r.peak_bytes / ref.peak_bytes:.2f}" if ref and ref.peak_bytes else "-",
                "ok",
            ]
        else:
            cells = ["-"] * 5 + [f"{r.status}: {r.detail}".replace("|", "/")]
        row = [r.model, r.backbone, r.dtype, f"{r.height} x {r.width}", backend, *cells]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a size is HxW, e.g. 769x769, got {text!r}") from None
    return height, width


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--models", nargs="+", default=list(MODELS), choices=MODELS)
    add("--backbones", nargs="+", default=["resnet50", "resnet101"])
    add("--sizes", nargs="+", type=parse_size, default=[(769, 769), (1024, 2048)],
        metavar="HxW")  # fmt: skip
    add("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS,
        help="DANet's PAM backends (CCNet has one attention implementation)")  # fmt: skip
    add("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES),
        help="float32, or autocast to float16/bfloat16")  # fmt: skip
    add("--batch", type=int, default=2)
    add("--repeats", type=int, default=3)
    add("--long-case-seconds", type=float, default=10.0,
        help="a case whose warm-up takes longer is timed by that one run")  # fmt: skip
    add("--quick", action="store_true", help="resnet18 at 128 x 128: a smoke test of the script")
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
    name = device_name(args.device)
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    results = []
    for case in make_cases(args):
        result = run_case(case, args.repeats, args.long_case_seconds)
        results.append(result)
        shown = (f"{result.seconds:.3f} s {mib(result.peak_bytes)} MiB" if result.status == "ok"
                 else f"{result.status}: {result.detail}")  # fmt: skip
        print(f"{case.model} {case.backbone} {case.dtype} {case.backend} "
              f"{case.height}x{case.width} {shown}", flush=True)  # fmt: skip
    duration = time.perf_counter() - started
    stem = args.stem or f"steps-{device_tag(args.device)}-{torch_tag()}" + (
        "-quick" if args.quick else ""
    )
    header = (f"Training steps on {name}; torch {torch.__version__}; batch {args.batch}; "
              f"output stride 8, 19 classes, random weights; memory: "
              f"{next((r.memory_method for r in results if r.memory_method), '-')}; "
              f"run took {duration:.0f} s.")  # fmt: skip
    table = markdown(results, header)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "device": name, "torch": torch.__version__, "python": platform.python_version(),
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "seconds": duration, "cases": [dataclasses.asdict(r) for r in results],
    }  # fmt: skip
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    (args.out / f"{stem}.md").write_text(table)
    print()
    print(table)
    print(f"wrote {args.out / stem}.json and .md in {duration:.0f} s")
    return results


if __name__ == "__main__":
    main()

"""Benchmark the whole DANet per attention backend: throughput and peak memory.

DANet on a dilated ResNet (output stride 8, random weights, 19 classes) at
segmentation image sizes, for inference (eval mode, ``torch.inference_mode``) and
for a training step (forward, DANetLoss on all three outputs, backward, SGD step).
Throughput is images per second; peak memory is what a case needs beyond the model
and its input (see ``benchmarks/harness.py``: CUDA ``max_memory_allocated``, CPU the
high-water mark of a forked process per case). A case that runs out of memory is a
result ("oom"), and the table ends with the largest image that fits per backend.

    python benchmarks/bench_danet.py --quick
    python benchmarks/bench_danet.py --backbones resnet50 --sizes 512x1024 769x769 1024x2048
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

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
    measure_on_device,
    mib,
    out_of_memory_reason,
    torch_tag,
)

from attnblocks.functional import last_attention_backend
from attnblocks.losses import DANetLoss
from attnblocks.models import DANet

BACKENDS = ("bmm", "chunked", "sdpa", "auto")
QUICK = dict(backbones=["resnet18"], sizes=[(128, 256), (256, 256)], repeats=2)


@dataclasses.dataclass
class Case:
    """One configuration."""

    backbone: str
    backend: str
    mode: str  # "inference" or "train"
    dtype: str
    height: int
    width: int
    batch: int
    device: str


@dataclasses.dataclass
class Result(Case):
    status: str = "ok"
    detail: str = ""
    ran_backend: str | None = None
    seconds: float | None = None
    repeats: int = 0
    images_per_second: float | None = None
    peak_bytes: int | None = None
    memory_method: str = ""


def build(case: Case) -> tuple[DANet, torch.Tensor, torch.Tensor]:
    """The model, a batch of images and labels for ``case``."""
    torch.manual_seed(0)
    device = torch.device(case.device)
    model = DANet(case.backbone, num_classes=19, output_stride=8, attention_backend=case.backend)
    model = model.to(device).train(case.mode == "train")
    images = torch.randn(case.batch, 3, case.height, case.width, device=device)
    labels = torch.randint(0, 19, (case.batch, case.height, case.width), device=device)
    return model, images, labels


def step_fn(model: DANet, images: torch.Tensor, labels: torch.Tensor, case: Case):
    """One inference pass or one training step, as a callable."""
    device_type = images.device.type
    autocast = (
        torch.autocast(device_type, dtype=DTYPES[case.dtype])
        if case.dtype != "float32"
        else contextlib.nullcontext()
    )
    if case.mode == "inference":

        def infer() -> None:
            with torch.inference_mode(), autocast:
                model(images)

        return infer
    criterion = DANetLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step() -> None:
        with autocast:
            loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return train_step


def measure_case(case: Case, repeats: int, long_case_seconds: float) -> dict:
    result = Result(**dataclasses.asdict(case))
    try:
        small = dataclasses.replace(case, height=64, width=64)  # loads code and workspaces
        step_fn(*build(small), small)()
        model, images, labels = build(case)
        measured = measure(step_fn(model, images, labels, case), torch.device(case.device),
                           repeats, long_case_seconds)  # fmt: skip
        result.seconds, result.repeats = measured.seconds, measured.repeats
        result.peak_bytes, result.memory_method = measured.peak_bytes, measured.memory_method
        result.images_per_second = case.batch / measured.seconds
        result.ran_backend = last_attention_backend()
    except (RuntimeError, torch.OutOfMemoryError) as error:
        reason = out_of_memory_reason(error)
        if reason is None:
            raise
        result.status, result.detail = "oom", reason
    return dataclasses.asdict(result)


def run_case(case: Case, repeats: int, long_case_seconds: float) -> Result:
    return measure_on_device(measure_case, case, Result, repeats, long_case_seconds)


def _progress_line(r: Result) -> str:
    shown = (
        f"{r.seconds:8.2f} s {mib(r.peak_bytes):>8} MiB"
        if r.status == "ok"
        else f"{r.status}: {r.detail}"
    )
    return f"{r.backbone} {r.mode:9} {r.dtype} {r.backend:7} {r.height}x{r.width} {shown}"


def markdown(results: list[Result], header: str) -> str:
    lines = [
        header,
        "",
        "| backbone | mode | dtype | image (H x W) | backend | time (s) | images/s | peak (MiB) "
        "| status |",
        "|---|---|---|---|---|---:|---:|---:|---|",
    ]
    for r in results:
        backend = r.backend if r.backend != "auto" else f"auto -> {r.ran_backend or '?'}"
        cells = (
            [f"{r.seconds:.2f}", f"{r.images_per_second:.3f}", mib(r.peak_bytes), "ok"]
            if r.status == "ok"
            else ["-", "-", "-", f"{r.status}: {r.detail}".replace("|", "/")]
        )
        row = [r.backbone, r.mode, r.dtype, f"{r.height} x {r.width}", backend, *cells]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Largest image that fits, per backend:", ""]
    lines += ["| backbone | mode | dtype | backend | largest image |", "|---|---|---|---|---|"]
    configs = sorted({(r.backbone, r.mode, r.dtype, r.backend) for r in results})
    for backbone, mode, dtype, backend in configs:
        fitting = [
            r for r in results
            if (r.backbone, r.mode, r.dtype, r.backend) == (backbone, mode, dtype, backend)
            and r.status == "ok"
        ]  # fmt: skip
        largest = max(fitting, key=lambda r: r.height * r.width, default=None)
        shown = f"{largest.height} x {largest.width}" if largest else "none of those tried"
        lines.append(f"| {backbone} | {mode} | {dtype} | {backend} | {shown} |")
    return "\n".join(lines) + "\n"


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a size is HxW, e.g. 512x1024, got {text!r}") from None
    return height, width


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda when there is one)")  # fmt: skip
    add("--backbones", nargs="+", default=["resnet50", "resnet101"],
        help="timm backbones of the DANets to time")  # fmt: skip
    add("--sizes", nargs="+", type=parse_size, default=[(512, 1024), (769, 769), (1024, 2048)],
        metavar="HxW", help="input image sizes, e.g. 512x1024")  # fmt: skip
    add("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS,
        help="PAM backends to compare")  # fmt: skip
    add("--modes", nargs="+", default=["inference", "train"], choices=["inference", "train"],
        help="inference (no gradients) and/or a training step (forward + backward)")  # fmt: skip
    add("--dtypes", nargs="+", default=["float32"], choices=list(DTYPES),
        help="float32, or autocast to float16/bfloat16")  # fmt: skip
    add("--batch", type=int, default=1, help="images per batch")
    add("--repeats", type=int, default=3, help="timed runs per case (the median is reported)")
    add("--long-case-seconds", type=float, default=10.0,
        help="a case whose warm-up takes longer is timed by that one run")  # fmt: skip
    add("--quick", action="store_true", help="resnet18 at small sizes: a smoke test of the script")
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
    free = free_memory_bytes() / 2**30
    print(f"device: {name}; torch {torch.__version__}; free memory {free:.0f} GiB")
    results = []
    for backbone in args.backbones:
        for mode in args.modes:
            for dtype in args.dtypes:
                for backend in args.backends:
                    out_of_memory = False
                    for height, width in sorted(args.sizes, key=lambda s: s[0] * s[1]):
                        case = Case(backbone, backend, mode, dtype, height, width, args.batch,
                                    args.device)  # fmt: skip
                        if out_of_memory:  # a larger image will not fit either
                            result = Result(**dataclasses.asdict(case), status="skipped",
                                            detail="a smaller image ran out of memory")  # fmt: skip
                        else:
                            result = run_case(case, args.repeats, args.long_case_seconds)
                        out_of_memory = out_of_memory or result.status == "oom"
                        results.append(result)
                        print(_progress_line(result), flush=True)
    duration = time.perf_counter() - started
    stem = args.stem or f"danet-{device_tag(args.device)}-{torch_tag()}" + (
        "-quick" if args.quick else ""
    )
    header = (f"Device: {name}; torch {torch.__version__}; batch {args.batch}; memory: "
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

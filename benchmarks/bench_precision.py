"""The precision contract of PAM's backends, measured: errors against float64.

For every dtype setting (float32; bfloat16 and float16 autocast; ``.bfloat16()`` and
``.half()`` modules and inputs) and every backend, a PAM runs forward and backward on
a small map and each result is compared with the same module run in float64 through
the ``bmm`` backend (the naive computation, validated against the authors' code):
the output, the input gradient and the gradient of every parameter, as the relative
L2 error ``||ours - ref|| / ||ref||``. The key projection's bias has a true gradient
of 0 (it shifts each softmax row by a constant), so its error is measured against the
query bias gradient's norm instead.

The memory-efficient backends run their value path in the low-precision dtype where
the device multiplies it faster than float32 and in float32 elsewhere
(``attnblocks.functional.low_precision_is_faster``); both paths are measured here
whatever this device is, by presetting that decision. The contract: every backend's
error, for every quantity, at most 1.5x bmm's in the same setting.

"sdpa inference" is the forward alone, without autograd, where the sdpa backend feeds
its fused kernel split low-precision queries and keys; "sdpa, chunked backward" is that
forward with the chunked backend's backward (a candidate of ``"auto"`` for training on
CUDA); the row marked "(rejected)" measures what the package does not ship: the
kernel's own backward on the split queries and keys.

Examples::

    python benchmarks/bench_precision.py                      # table on stdout and in results/
    python benchmarks/bench_precision.py --channels 256 --out /tmp/precision
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared harness, run as a script

from harness import default_out_dir, device_name, device_tag, torch_tag

from attnblocks import PAM
from attnblocks.functional import _fused_forward, _precision, _sdpa, position

SETTINGS = (
    "float32",
    "bfloat16 autocast",
    "float16 autocast",
    "bfloat16 module",
    "float16 module",
)
QUANTITIES = (
    "output",
    "grad input",
    "grad query_conv.weight",
    "grad query_conv.bias",
    "grad key_conv.weight",
    "grad key_conv.bias",
    "grad value_conv.weight",
    "grad value_conv.bias",
    "grad gamma",
)
#: (backend, value path) pairs measured; "low" = the low-precision value path.
VARIANTS = (
    ("bmm", "-"),
    ("chunked", "low"),
    ("chunked", "float32"),
    ("sdpa", "float32"),  # with gradients sdpa runs float32 whatever the device
    ("sdpa inference", "low"),  # forward only: the fused kernel on split queries/keys
    ("sdpa, chunked backward", "low"),  # that forward, with gradients from the chunked backward
    ("sdpa, chunked backward", "float32"),
    ("sdpa split (rejected)", "low"),
)
CONTRACT_RATIO = 1.5
#: Errors below this are float32 rounding noise: a quantity whose bmm error is ~0
#: (the key bias gradient) holds the contract while it stays under the floor.
NOISE_FLOOR = 1e-5


def build_pam(channels: int, seed: int) -> PAM:
    """A PAM with gamma 0.5 and He-scaled random weights, as a trained block might hold."""
    generator = torch.Generator().manual_seed(seed)
    pam = PAM(channels, gamma_init=0.5)
    with torch.no_grad():
        for parameter in pam.parameters():
            if parameter.ndim == 4:
                std = (2 / parameter.shape[1]) ** 0.5
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
            elif parameter.numel() > 1:  # biases
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return pam


@contextlib.contextmanager
def value_path(low_is_fast: bool) -> Iterator[None]:
    """Preset whether the low-precision value path runs (as if measured), then restore."""
    saved = dict(_precision._LOW_PRECISION_IS_FASTER), dict(position._AUTOMATIC_CHOICES)
    _precision._LOW_PRECISION_IS_FASTER.clear()
    for device in ("cpu", "cuda"):
        for dtype in _precision.LOW_PRECISION_DTYPES:
            _precision._LOW_PRECISION_IS_FASTER[(device, dtype)] = low_is_fast
    position._AUTOMATIC_CHOICES.clear()
    try:
        yield
    finally:
        _precision._LOW_PRECISION_IS_FASTER.clear()
        _precision._LOW_PRECISION_IS_FASTER.update(saved[0])
        position._AUTOMATIC_CHOICES.clear()
        position._AUTOMATIC_CHOICES.update(saved[1])


@contextlib.contextmanager
def split_with_gradients() -> Iterator[None]:
    """Let the sdpa backend use split queries/keys even when gradients are needed."""
    original = _sdpa.needs_grad
    _sdpa.needs_grad = lambda *tensors: False
    try:
        yield
    finally:
        _sdpa.needs_grad = original


def _module_dtype(setting: str) -> torch.dtype | None:
    return {"bfloat16 module": torch.bfloat16, "float16 module": torch.float16}.get(setting)


def forward_backward(
    pam: PAM, x: torch.Tensor, setting: str, train: bool = True
) -> dict[str, torch.Tensor]:
    """Output and gradients of ``(out * w).sum()``, ``w`` a fixed ramp, in ``setting``;
    the output alone when not ``train`` (run without autograd, as inference is)."""
    x = x.detach().clone().requires_grad_(train)
    if setting.endswith("autocast"):
        context = torch.autocast(x.device.type, dtype=getattr(torch, setting.split()[0]))
    else:
        context = contextlib.nullcontext()
    with context, torch.set_grad_enabled(train):
        out = pam(x)
    if not train:
        return {"output": out}
    ramp = torch.linspace(-1, 1, out.numel(), dtype=torch.float64, device=x.device)
    (out.double() * ramp.reshape(out.shape)).sum().backward()
    results = {"output": out.detach(), "grad input": x.grad}
    results.update({f"grad {name}": p.grad for name, p in pam.named_parameters()})
    return results


def relative_errors(
    ours: list[dict[str, torch.Tensor]], reference: list[dict[str, torch.Tensor]]
) -> dict[str, float]:
    """Relative L2 error per quantity, pooled over runs (seeds): ``||ours - ref|| / ||ref||``
    over all runs' values at once; the key bias against the query bias gradient's norm.

    Pooling matters for gamma: its gradient ``sum(dOut * attended)`` cancels to a small
    number, so one seed's relative error swings 100x with the luck of that cancellation.
    """
    errors = {}
    for name in QUANTITIES:
        if name not in ours[0]:
            errors[name] = float("nan")  # not computed (inference)
            continue
        scale_name = "grad query_conv.bias" if name == "grad key_conv.bias" else name
        difference = torch.cat([(o[name].double() - r[name].double()).flatten()
                                for o, r in zip(ours, reference)])  # fmt: skip
        scale = torch.cat([r[scale_name].double().flatten() for r in reference])
        errors[name] = (difference.norm() / scale.norm()).item()
    return errors


def measure(
    setting: str,
    backend: str,
    low_is_fast: bool,
    channels: int = 64,
    size: tuple[int, int] = (12, 14),
    batch: int = 2,
    activation_scale: float = 1.0,
    seeds: tuple[int, ...] = tuple(range(8)),
    device: str = "cpu",
) -> dict[str, float]:
    """Relative errors of one backend in one setting against float64 (see the module doc).

    Args:
        setting: one of :data:`SETTINGS`.
        backend: ``"bmm"``, ``"chunked"``, ``"sdpa"``, ``"auto"``, ``"sdpa inference"``
            (forward only), ``"sdpa, chunked backward"`` or ``"sdpa split (rejected)"``.
        low_is_fast: run the low-precision value path (True) or the float32 one.
        channels: PAM channels (query/key width ``channels // 8``).
        size: ``(H, W)`` of the map.
        batch: batch size.
        activation_scale: standard deviation of the input activations.
        seeds: seeds of weights and inputs; errors are pooled over them.
        device: where both computations run.
    """
    ours, reference = [], []
    for seed in seeds:
        pam = build_pam(channels, seed).to(device)
        generator = torch.Generator().manual_seed(seed + 1000)
        x = activation_scale * torch.randn(batch, channels, *size, generator=generator)
        x = x.to(device)
        module_dtype = _module_dtype(setting)
        if module_dtype is not None:  # both computations start from the same rounded numbers
            pam, x = pam.to(module_dtype), x.to(module_dtype)
        reference_pam = copy.deepcopy(pam).double()
        reference_pam.backend = "bmm"
        reference.append(forward_backward(reference_pam, x.double(), "float32"))
        pam.backend = "sdpa" if backend.startswith("sdpa") else backend
        pam.chunk_size = 37  # several chunks, the last one short
        split = split_with_gradients() if "split" in backend else contextlib.nullcontext()
        forced = _fused_forward.chunked_backward("chunked backward" in backend)
        with value_path(low_is_fast), split, forced:
            ours.append(forward_backward(pam, x, setting, train="inference" not in backend))
    return relative_errors(ours, reference)


def contract_table(
    channels: int, activation_scale: float, device: str = "cpu"
) -> tuple[list[dict], str]:
    """Every setting and variant: errors, the worst ratio to bmm and whether it holds."""
    rows = []
    options = {"channels": channels, "activation_scale": activation_scale, "device": device}
    for setting in SETTINGS:
        bmm = measure(setting, "bmm", False, **options)
        for backend, path in VARIANTS:
            if setting == "float32" and path == "low":
                continue  # float32 has no low-precision value path
            errors = (
                bmm if backend == "bmm" else measure(setting, backend, path == "low", **options)
            )
            ratios = {
                name: errors[name] / max(bmm[name], NOISE_FLOOR / CONTRACT_RATIO)
                for name in QUANTITIES
                if not math.isnan(errors[name])
            }
            worst = max(ratios, key=ratios.get)
            rows.append(
                {
                    "setting": setting,
                    "backend": backend,
                    "value_path": path if setting != "float32" else "float32",
                    "errors": errors,
                    "worst_quantity": worst,
                    "worst_ratio": ratios[worst],
                    "holds": all(value <= CONTRACT_RATIO for value in ratios.values()),
                }
            )
    short = [name.replace("grad ", "d").replace("_conv", "") for name in QUANTITIES]
    lines = [
        "| setting | backend | value path | " + " | ".join(short) + " | worst / bmm | holds |",
        "|---|---|---|" + "---:|" * len(short) + "---:|---|",
    ]
    for row in rows:
        cells = [
            "-" if math.isnan(row["errors"][name]) else f"{row['errors'][name]:.1e}"
            for name in QUANTITIES
        ]
        ratio = "1" if row["backend"] == "bmm" else f"{row['worst_ratio']:.2f}"
        holds = "yes" if row["holds"] else f"**no** ({row['worst_quantity']})"
        lines.append(
            f"| {row['setting']} | {row['backend']} | {row['value_path']} | "
            + " | ".join(cells)
            + f" | {ratio} | {holds} |"
        )
    return rows, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=64, help="PAM channels C")
    parser.add_argument("--activation-scale", type=float, default=1.0,
                        help="factor on the random input (large: float16's range)")  # fmt: skip
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when there is one)")  # fmt: skip
    parser.add_argument(
        "--out",
        type=Path,
        default=default_out_dir(),
        help="default runs/benchmarks; the committed tables: benchmarks/results",
    )
    parser.add_argument("--stem", help="output file name stem (default: from device and torch)")
    args = parser.parse_args(argv)
    rows, table = contract_table(args.channels, args.activation_scale, args.device)
    header = (
        f"PAM C={args.channels} (query/key width {args.channels // 8}), input (2, "
        f"{args.channels}, 12, 14) x {args.activation_scale}, chunk 37; relative L2 errors "
        f"against float64 bmm, pooled over 8 seeds of weights and input; "
        f"{device_name(args.device)}; torch {torch.__version__}."
    )
    print(header, "", table, sep="\n")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.stem or f"precision-{device_tag(args.device)}-{torch_tag()}-c{args.channels}"
    (args.out / f"{stem}.md").write_text(header + "\n\n" + table)
    payload = {"header": header, "python": platform.python_version(), "rows": rows}
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    print(f"wrote {args.out / stem}.md and .json")
    return rows


if __name__ == "__main__":
    main()

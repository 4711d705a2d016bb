"""The CUDA tests and the CUDA benchmark sweep, in pieces of under 10 minutes each.

Every piece writes its files into ``--out`` with the card in their names
(``attention-cuda-h100-torch2.14-pam-bfloat16.md``, ...); copy them into
``benchmarks/results/`` to commit them. Run the pieces one by one where a GPU is lent
for a few minutes at a time, or all in one go::

    python benchmarks/cuda_sweep.py --list
    python benchmarks/cuda_sweep.py tests --out "$OUT"          # CUDA tests + precision table
    python benchmarks/cuda_sweep.py pam-bfloat16 --out "$OUT"   # one benchmark piece
    python benchmarks/cuda_sweep.py all --out benchmarks/results
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared harness, run as a script

from harness import default_out_dir, device_tag, torch_tag

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
PAM_SIZES = ["4096", "8192", "16384", "32768", "65536"]
CUDA_TESTS = ["tests/functional/test_position_backends_cuda.py"]


def _attention(stem: str, *options: str) -> list[str]:
    return [sys.executable, str(BENCHMARKS / "bench_attention.py"), "--device", "cuda",
            "--repeats", "5", "--give-up-seconds", "60", "--stem", stem, *options]  # fmt: skip


def _danet(stem: str, *options: str) -> list[str]:
    return [sys.executable, str(BENCHMARKS / "bench_danet.py"), "--device", "cuda",
            "--backbones", "resnet50", "resnet101", "--sizes", "512x1024", "769x769",
            "1024x2048", "--backends", "bmm", "chunked", "sdpa", "auto", "--stem", stem,
            *options]  # fmt: skip


def card_tag() -> str:
    """``cuda-h100-torch2.14``: the card and torch in file names (a placeholder without one)."""
    card = device_tag("cuda") if torch.cuda.is_available() else "cuda-CARD"
    return f"{card}-{torch_tag()}"


def pieces(out: Path, tag: str) -> dict[str, list[list[str]]]:
    """Each piece's commands, aimed to end well inside 10 minutes on an H100.

    Args:
        out: the output folder.
        tag: device and torch tag of the file names (:func:`card_tag`).
    """
    tests = [sys.executable, "-m", "pytest", "-q", "-rs", "--junit-xml",
             str(out / f"tests-{tag}.xml"), *CUDA_TESTS]  # fmt: skip
    precision = [sys.executable, str(BENCHMARKS / "bench_precision.py"), "--device", "cuda",
                 "--out", str(out), "--channels", "512"]  # fmt: skip
    result = {"tests": [tests, precision]}
    for dtype in ("bfloat16", "float16", "float32"):
        result[f"pam-{dtype}"] = [
            _attention(f"attention-{tag}-pam-{dtype}", "--blocks", "pam", "--dtypes", dtype,
                       "--sizes", *PAM_SIZES, "--chunk-sizes", "1024", "--out", str(out))
        ]  # fmt: skip
    result["cam"] = [
        _attention(f"attention-{tag}-cam", "--blocks", "cam", "--dtypes", "float32",
                   "bfloat16", "float16", "--sizes", *PAM_SIZES, "--out", str(out))
    ]  # fmt: skip
    for dtype in ("bfloat16", "float32"):
        result[f"danet-{dtype}"] = [
            _danet(f"danet-{tag}-{dtype}", "--dtypes", dtype, "--out", str(out))
        ]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("piece", nargs="?", help="a piece's name (see --list), or 'all'")
    parser.add_argument("--list", action="store_true", help="list the pieces and their commands")
    parser.add_argument("--out", type=Path, default=default_out_dir(), help="output folder")
    args = parser.parse_args(argv)
    if args.list or args.piece is None:
        if not torch.cuda.is_available():
            print("(no CUDA GPU here: file names below would carry the card's name)")
        for name, commands in pieces(args.out, card_tag()).items():
            print(f"{name}:")
            for command in commands:
                print("    " + " ".join(command))
        return 0
    if not torch.cuda.is_available():
        parser.error("no CUDA GPU: the sweep needs one (torch.cuda.is_available() is False)")
    available = pieces(args.out, card_tag())
    names = list(available) if args.piece == "all" else [args.piece]
    unknown = [name for name in names if name not in available]
    if unknown:
        parser.error(f"unknown piece {unknown[0]!r}; expected one of {', '.join(available)}, all")
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in names:
        for command in available[name]:
            started = time.perf_counter()
            print(f"[{name}] {' '.join(command)}", flush=True)
            failed += subprocess.run(command, cwd=ROOT).returncode != 0
            print(f"[{name}] {time.perf_counter() - started:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

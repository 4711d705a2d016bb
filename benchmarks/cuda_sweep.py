"""The CUDA tests and the CUDA benchmark sweep, in pieces of under 10 minutes each.

Every piece writes its files into ``--out`` with the card in their names
(``attention-cuda-h200-torch2.14-pam-bfloat16-train.md``, ...); copy them into
``benchmarks/results/`` to commit them. Run the pieces one by one where a GPU is lent
for a few minutes at a time, or all in one go::

    python benchmarks/cuda_sweep.py --list
    python benchmarks/cuda_sweep.py tests --out "$OUT"               # CUDA tests + precision
    python benchmarks/cuda_sweep.py pam-bfloat16-train --out "$OUT"  # one benchmark piece
    python benchmarks/cuda_sweep.py verdict --out "$OUT"             # the acceptance check
    python benchmarks/cuda_sweep.py all --out benchmarks/results
    python benchmarks/cuda_sweep.py pam-float32-forward --dry-run --out /tmp/dry  # on CPU
    python benchmarks/cuda_sweep.py lease --minutes 8 --out "$OUT"  # one short GPU session

The pieces:

- ``tests``: the CUDA tests (fused kernels and value splits against bmm, the kernel table
  against torch's own report for this card, the precision contract, ``auto``'s
  measurement) and the precision table at C=512.
- ``pam-<dtype>-<mode>`` (``pam-<dtype>``: both modes): PAM C=512 at N = 4096, 16384,
  32768, 65536, float32 or
  bfloat16/float16 autocast, forward or forward + backward: bmm, chunked (its default
  and 1024), sdpa (the dispatch's plan, each forced value split 1/2/4/8, each kernel
  forced with each split; in training also the fused forward with the chunked backward),
  auto (and what its measurement timed), and ``direct`` (torch's memory-efficient kernel
  called on the autocast-dtype q, k, v): time and peak memory, tables and plots. The
  tables are rewritten after every case, so a piece stopped midway keeps its rows.
- ``cam``: CAM at the same sizes.
- ``danet-<dtype>``: DANet R-50/R-101 inference and training steps per backend, batch 1.
- ``steps-danet-<dtype>``, ``steps-ccnet``: whole training steps at 769x769 and
  1024x2048, batch 2 (``bench_steps.py``).
- ``verdict``: the issue's acceptance check on the bfloat16 training table (no GPU needed:
  it reads the table): auto vs bmm and vs the direct memory-efficient call at N=32768.
- ``lease``: what one short GPU session runs in a single call: the pieces of
  :data:`LEASE_ORDER` (tests, the acceptance piece and its verdict first) one after the
  other until ``--minutes`` are spent (a piece still running then, or after half of them,
  is stopped), with the machine and its software written down, everything packed into
  one ``cuda-sweep-<tag>.tar.gz`` in ``--out`` beside the summary and the verdict (three
  files: a lent machine sends few back). Unpack the tables into ``benchmarks/results/``.

The pieces run this checkout's package, installed or not (a lent machine has torch, timm
and einops, not this package).

``--dry-run`` runs a piece's commands on this machine's CPU at toy sizes (N=64, 64x64
images, resnet18, C=16, one repeat, one forced split and kernel), into file names tagged
``dryrun``: a check that the commands parse and write their tables, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
# The shared harness, and this checkout's package (measured even where none is installed).
sys.path[:0] = [str(BENCHMARKS), str(ROOT)]

from harness import default_out_dir, device_tag, torch_tag, variant_label

PAM_SIZES = ["4096", "16384", "32768", "65536"]
CUDA_TESTS = ["tests/functional/test_position_backends_cuda.py"]
#: The acceptance check: bfloat16 autocast PAM C=512 forward + backward at N=32768.
VERDICT_POSITIONS = 32768
VERDICT_SPEEDUP_OVER_BMM = 3.0
VERDICT_MEMORY_OF_BMM = 0.05
VERDICT_SPEEDUP_OVER_DIRECT = 1.3
# What --dry-run puts in place of each option it finds (toy sizes on the CPU); the file
# names carry the dry run's tag already.
DRY_OPTIONS = {
    "--device": ["cpu"],
    "--sizes": None,  # per script, below
    "--backbones": ["resnet18"],
    "--channels": ["16"],
    "--repeats": ["1"],
    "--chunk-sizes": ["32"],
    "--value-splits": ["2"],  # one forced split and one forced kernel (on CPU: rejected)
    "--kernels": ["efficient"],
}
DRY_SIZES = {"bench_attention.py": ["64"], "bench_danet.py": ["64x64"],
             "bench_steps.py": ["64x64"]}  # fmt: skip
# Options --dry-run adds where a command leaves them at their defaults.
DRY_DEFAULTS = {
    "bench_attention.py": ["--channels", "16", "--repeats", "1"],
    "bench_danet.py": ["--repeats", "1"],
    "bench_steps.py": ["--repeats", "1"],
}
#: What ``lease`` runs, most wanted first: the CUDA tests, the acceptance piece and its
#: verdict, then the other tables while time is left.
LEASE_ORDER = ("tests", "pam-bfloat16-train", "verdict", "pam-bfloat16-forward",
               "pam-float32-train", "pam-float16-train", "steps-danet-bfloat16", "steps-ccnet",
               "pam-float32-forward", "pam-float16-forward", "cam", "danet-bfloat16",
               "steps-danet-float32", "danet-float32")  # fmt: skip
#: ``lease`` starts no piece with less time than this left before its deadline.
LEASE_MINIMUM_SECONDS = 30.0
#: No piece of a lease may take more than this share of it (a hung piece leaves the rest).
LEASE_PIECE_SHARE = 0.5


def _script(name: str, *options: str) -> list[str]:
    return [sys.executable, str(BENCHMARKS / name), *options]


def _attention(stem: str, *options: str) -> list[str]:
    return _script("bench_attention.py", "--device", "cuda", "--repeats", "5",
                   "--give-up-seconds", "60", "--stem", stem, *options)  # fmt: skip


def card_tag() -> str:
    """``cuda-h200-torch2.14``: the card and torch in file names (a placeholder without one)."""
    card = device_tag("cuda") if torch.cuda.is_available() else "cuda-CARD"
    return f"{card}-{torch_tag()}"


def pieces(out: Path, tag: str) -> dict[str, list[list[str]]]:
    """Each piece's commands, each piece aimed to end well inside 10 minutes on an H200.

    Args:
        out: the output folder.
        tag: device and torch tag of the file names (:func:`card_tag`).
    """
    # -n 0: one process (the tests share one GPU; xdist's workers would each start CUDA).
    tests = [sys.executable, "-m", "pytest", "-q", "-rs", "-n", "0", "--junit-xml",
             str(out / f"tests-{tag}.xml"), *CUDA_TESTS]  # fmt: skip
    precision = _script("bench_precision.py", "--device", "cuda", "--out", str(out),
                        "--channels", "512", "--stem", f"precision-{tag}-c512")  # fmt: skip
    result = {"tests": [tests, precision]}
    for dtype in ("float32", "bfloat16", "float16"):
        for mode in ("forward", "train"):
            # The verdict's rows (bmm, auto, direct) first: a piece stopped midway keeps them.
            hybrid = ["--chunked-backward"] if mode == "train" else []
            result[f"pam-{dtype}-{mode}"] = [
                _attention(f"attention-{tag}-pam-{dtype}-{mode}", "--blocks", "pam",
                           "--dtypes", dtype, "--modes", mode, "--sizes", *PAM_SIZES,
                           "--backends", "bmm", "auto", "direct", "chunked", "sdpa",
                           "--value-splits", "1", "2", "4", "8",
                           "--kernels", "cudnn", "flash", "efficient", *hybrid,
                           "--chunk-sizes", "1024", "--out", str(out))
            ]  # fmt: skip
    result["cam"] = [
        _attention(f"attention-{tag}-cam", "--blocks", "cam", "--dtypes", "float32",
                   "bfloat16", "float16", "--sizes", *PAM_SIZES, "--out", str(out))
    ]  # fmt: skip
    for dtype in ("bfloat16", "float32"):
        result[f"danet-{dtype}"] = [
            _script("bench_danet.py", "--device", "cuda", "--backbones", "resnet50",
                    "resnet101", "--sizes", "512x1024", "769x769", "1024x2048", "--backends",
                    "bmm", "chunked", "sdpa", "auto", "--dtypes", dtype, "--stem",
                    f"danet-{tag}-{dtype}", "--out", str(out))
        ]  # fmt: skip
    for dtype in ("float32", "bfloat16"):
        result[f"steps-danet-{dtype}"] = [
            _script("bench_steps.py", "--device", "cuda", "--models", "danet", "--backbones",
                    "resnet50", "resnet101", "--sizes", "769x769", "1024x2048", "--batch", "2",
                    "--dtypes", dtype, "--stem", f"steps-danet-{tag}-{dtype}", "--out", str(out))
        ]  # fmt: skip
    result["steps-ccnet"] = [
        _script("bench_steps.py", "--device", "cuda", "--models", "ccnet", "--backbones",
                "resnet50", "resnet101", "--sizes", "769x769", "1024x2048", "--batch", "2",
                "--dtypes", "float32", "bfloat16", "--stem", f"steps-ccnet-{tag}",
                "--out", str(out))
    ]  # fmt: skip
    return result


def aliases(names: list[str]) -> dict[str, list[str]]:
    """Short names for groups of pieces: ``pam-<dtype>`` runs both of its modes.

    Args:
        names: the pieces' names.
    """
    groups: dict[str, list[str]] = {}
    for name in names:
        if name.startswith("pam-") and name.count("-") == 2:
            groups.setdefault(name.rsplit("-", 1)[0], []).append(name)
    return groups


def dry(command: list[str]) -> list[str]:
    """``command`` at toy sizes on the CPU (see the module docstring)."""
    script = Path(command[1]).name if len(command) > 1 else ""
    if script not in DRY_SIZES and script != "bench_precision.py":
        return list(command)  # pytest: the CUDA tests skip themselves without a GPU
    result, index = [], 0
    while index < len(command):
        part = command[index]
        if part in DRY_OPTIONS:
            values = DRY_OPTIONS[part] if part != "--sizes" else DRY_SIZES[script]
            index += 1
            while index < len(command) and not command[index].startswith("--"):
                index += 1  # drop the piece's own values
            result += [part, *values]
            continue
        result.append(part)
        index += 1
    defaults = DRY_DEFAULTS.get(script, [])
    for flag, value in zip(defaults[::2], defaults[1::2]):
        if flag not in result:
            result += [flag, value]
    return result


def _matches(case: dict, fields: dict[str, object]) -> bool:
    return all(case.get(k) == v for k, v in fields.items())


def _case(cases: list[dict], **fields: object) -> dict | None:
    return next((c for c in cases if _matches(c, fields)), None)


def verdict(table: Path) -> tuple[bool, str]:
    """The acceptance check on a ``pam-bfloat16-train`` table (``bench_attention.py`` JSON).

    Holds when ``auto`` (PAM's default) at N=32768 is at least 3x faster than bmm at
    most 0.05x its peak memory, and at least 1.3x faster than the ``direct`` call.

    Args:
        table: the JSON file.

    Returns:
        Whether it holds, and a report in Markdown.
    """
    payload = json.loads(table.read_text())
    cases = [c for c in payload["cases"] if c["status"] == "ok"]
    same_size = {"dtype": "bfloat16", "mode": "train", "positions": VERDICT_POSITIONS}
    select = {**same_size, "value_split": None, "kernel": None, "chunk_size": None}
    auto = _case(cases, backend="auto", **select)
    bmm = _case(cases, backend="bmm", **select)
    direct = _case(cases, backend="direct", **select)
    lines = [f"Acceptance check on {payload['device']}, torch {payload['torch']}: bfloat16 "
             f"autocast PAM C=512 forward + backward at N={VERDICT_POSITIONS} ({table.name}).",
             ""]  # fmt: skip
    if auto is None or bmm is None or direct is None:
        missing = [n for n, c in (("auto", auto), ("bmm", bmm), ("direct", direct)) if c is None]
        lines.append(f"- **not decided**: no measured row for {', '.join(missing)}")
        return False, "\n".join(lines) + "\n"
    checks = [
        ("time bmm / auto", bmm["seconds"] / auto["seconds"], ">=", VERDICT_SPEEDUP_OVER_BMM),
        ("peak auto / bmm", auto["peak_bytes"] / bmm["peak_bytes"], "<=", VERDICT_MEMORY_OF_BMM),
        ("time direct / auto", direct["seconds"] / auto["seconds"], ">=",
         VERDICT_SPEEDUP_OVER_DIRECT),
    ]  # fmt: skip
    holds = True
    ran = auto["ran_backend"] + (f" ({auto['ran_plan']})" if auto.get("ran_plan") else "")
    lines.append(
        f"auto ran {ran}: {auto['seconds'] * 1e3:.1f} ms, "
        f"{auto['peak_bytes'] / 2**20:.0f} MiB; bmm {bmm['seconds'] * 1e3:.1f} ms, "
        f"{bmm['peak_bytes'] / 2**20:.0f} MiB; direct {direct['seconds'] * 1e3:.1f} ms."
    )
    lines.append("")  # fmt: skip
    for name, value, sense, bound in checks:
        ok = value >= bound if sense == ">=" else value <= bound
        holds = holds and ok
        lines.append(f"- {name} = {value:.3f} (needs {sense} {bound}): {'yes' if ok else '**no**'}")
    # Every package variant at this size, fastest first: what auto could have run.
    rows = [c for c in cases if c["backend"] != "direct" and _matches(c, same_size)]
    lines += ["", f"Holds: {'yes' if holds else '**no**'}", "",
              f"All rows at N={VERDICT_POSITIONS}, fastest first:", ""]  # fmt: skip
    for row in sorted(rows, key=lambda c: c["seconds"]):
        plan = f" ({row['ran_plan']})" if row.get("ran_plan") else ""
        if row["backend"] == "auto":
            plan = f" -> {row['ran_backend']}{plan}"
        forced = (row.get(k) for k in ("kernel", "value_split", "chunked_backward", "chunk_size"))
        variant = variant_label(row["backend"], *forced)
        lines.append(f"- {variant}{plan}: {row['seconds'] * 1e3:.1f} ms, "
                     f"{row['peak_bytes'] / 2**20:.0f} MiB")  # fmt: skip
    return holds, "\n".join(lines) + "\n"


def write_verdict(folder: Path, tag: str) -> bool | None:
    """Check the ``pam-bfloat16-train`` table in ``folder``, print the report and write it
    as ``acceptance-<tag>.md`` there; whether the target holds, None without a table.

    Args:
        folder: where the piece wrote its table.
        tag: device and torch tag of the file names.
    """
    table = folder / f"attention-{tag}-pam-bfloat16-train.json"
    if not table.exists():
        return None
    holds, report = verdict(table)
    (folder / f"acceptance-{tag}.md").write_text(report)
    print(report, flush=True)
    return holds


def _run_verdict(out: Path, tag: str) -> int:
    holds = write_verdict(out, tag)
    if holds is None:
        print(f"no {out / f'attention-{tag}-pam-bfloat16-train.json'}: run the "
              "pam-bfloat16-train piece first", file=sys.stderr)  # fmt: skip
    return 0 if holds else 1


def child_environment() -> dict[str, str]:
    """The environment of the pieces' commands: this checkout's package first on the path."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def environment_report() -> str:
    """The machine and software a lease ran on, for the results' readers."""
    import einops
    import timm

    lines = [f"python {platform.python_version()}, torch {torch.__version__}, "
             f"timm {timm.__version__}, einops {einops.__version__}",
             f"host: {platform.node()}, {os.cpu_count()} cores"]  # fmt: skip
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        lines += [
            f"GPU: {properties.name}, capability {properties.major}.{properties.minor}, "
            f"{properties.total_memory / 2**30:.0f} GiB, "
            f"{properties.multi_processor_count} multiprocessors",
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
        ]
        try:
            smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60)
            lines += ["", smi.stdout.strip()]
        except (OSError, subprocess.SubprocessError) as error:
            lines.append(f"nvidia-smi: {error}")
    else:
        lines.append("GPU: none")
    return "\n".join(lines) + "\n"


def run_until(command: list[str], deadline: float, log: Path) -> str:
    """Run ``command`` (output appended to ``log``), stopped at ``deadline`` (a
    ``time.monotonic()`` reading) with everything it started; ``"ok"`` or what went wrong.

    Args:
        command: the command.
        deadline: when to stop it.
        log: the log file.
    """
    with log.open("a") as stream:
        stream.write(f"$ {' '.join(command)}\n")
        stream.flush()
        # A session of its own, so that the pieces' own children (pytest workers) stop too.
        process = subprocess.Popen(command, cwd=ROOT, env=child_environment(), stdout=stream,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            code = process.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return "stopped: out of time"
    return "ok" if code == 0 else f"failed (exit code {code})"


def lease(out: Path, work: Path, tag: str, minutes: float, dry_run: bool = False) -> int:
    """Run :data:`LEASE_ORDER` until ``minutes`` are spent, then pack the results into ``out``.

    Writes three files into ``out``: ``cuda-sweep-<tag>.tar.gz`` (every table, plot, the
    test report, the log and the environment), ``lease-<tag>.md`` (what ran, how long)
    and ``acceptance-<tag>.md`` (the verdict, when its table was made).

    Args:
        out: where the three files go.
        work: where the pieces write (outside ``out``).
        tag: device and torch tag of the file names.
        minutes: the time the pieces may take together.
        dry_run: run the pieces at toy sizes on the CPU (see :func:`dry`).

    Returns:
        0 when every piece ran to its end without error (the verdict's answer is reported,
        not counted), 1 otherwise.
    """
    deadline = time.monotonic() + 60 * minutes
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log = work / f"lease-{tag}.log"
    environment = environment_report()
    (work / f"environment-{tag}.txt").write_text(environment)
    print(environment, flush=True)
    available = pieces(work, tag)
    rows = []
    for name in LEASE_ORDER:
        started = time.monotonic()
        if deadline - started < LEASE_MINIMUM_SECONDS:
            rows.append((name, "not started: no time left", 0.0))
            continue
        if name == "verdict":
            holds = write_verdict(work, tag)
            status = ("no table: pam-bfloat16-train did not write one" if holds is None
                      else f"ok (target {'met' if holds else 'not met'})")  # fmt: skip
        else:
            status = "ok"
            stop = min(deadline, started + LEASE_PIECE_SHARE * 60 * minutes)
            for command in available[name]:
                ran = run_until(dry(command) if dry_run else command, stop, log)
                status = ran if ran != "ok" else status
        rows.append((name, status, time.monotonic() - started))
        print(f"[{name}] {status}, {rows[-1][2]:.0f} s", flush=True)
    summary = [f"# GPU lease {tag}", "", f"{minutes:g} minutes for the pieces; log and tables "
               f"in cuda-sweep-{tag}.tar.gz.", "", "| piece | status | seconds |",
               "|---|---|---:|", *(f"| {n} | {s} | {t:.0f} |" for n, s, t in rows)]  # fmt: skip
    (work / f"lease-{tag}.md").write_text("\n".join(summary) + "\n")
    with tarfile.open(out / f"cuda-sweep-{tag}.tar.gz", "w:gz") as archive:
        for path in sorted(work.iterdir()):
            archive.add(path, arcname=path.name)
    for name in (f"lease-{tag}.md", f"acceptance-{tag}.md"):
        if (work / name).exists():
            (out / name).write_text((work / name).read_text())
    print("\n".join(summary), flush=True)
    return 0 if all(s.startswith("ok") for _, s, _ in rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "piece", nargs="?", help="a piece's name (see --list), 'verdict', 'all' or 'lease'"
    )
    parser.add_argument("--list", action="store_true", help="list the pieces and their commands")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run the piece on this CPU at toy sizes (no GPU needed)",
    )
    parser.add_argument("--out", type=Path, default=default_out_dir(), help="output folder")
    parser.add_argument("--tag", help="device/torch tag of the file names (default: the card's)")
    parser.add_argument("--minutes", type=float, default=8.0,
                        help="lease: the time its pieces may take together")  # fmt: skip
    parser.add_argument(
        "--work",
        type=Path,
        help="lease: where the pieces write (default: a folder in the temp dir)",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error(f"--minutes must be positive, got {args.minutes:g}")
    tag = args.tag or (f"dryrun-{device_tag('cpu')}-{torch_tag()}" if args.dry_run
                       else card_tag())  # fmt: skip
    available = pieces(args.out, tag)
    if args.list or args.piece is None:
        if not torch.cuda.is_available():
            print("(no CUDA GPU here: file names below would carry the card's name)")
        for name, commands in available.items():
            print(f"{name}:")
            for command in commands:
                print("    " + " ".join(command))
        for alias, members in aliases(list(available)).items():
            print(f"{alias}: {' + '.join(members)}")
        print("verdict:\n    (reads the pam-bfloat16-train table, writes acceptance-<tag>.md)")
        print(f"lease: {' -> '.join(LEASE_ORDER)} until --minutes are spent, packed into --out")
        return 0
    if args.piece == "verdict":
        return _run_verdict(args.out, tag)
    if not torch.cuda.is_available() and not args.dry_run:
        parser.error("no CUDA GPU: the sweep needs one (torch.cuda.is_available() is False); "
                     "--dry-run runs a piece on the CPU at toy sizes")  # fmt: skip
    if args.piece == "lease":
        work = args.work or Path(tempfile.gettempdir()) / f"attnblocks-lease-{tag}"
        if work.resolve() == args.out.resolve() or args.out.resolve() in work.resolve().parents:
            parser.error(f"--work {work} must lie outside --out {args.out}: only the packed "
                         "results belong there")  # fmt: skip
        return lease(args.out, work, tag, args.minutes, args.dry_run)
    names = list(available) if args.piece == "all" else [args.piece]
    names = [member for name in names for member in aliases(list(available)).get(name, [name])]
    unknown = [name for name in names if name not in available]
    if unknown:
        parser.error(f"unknown piece {unknown[0]!r}; expected one of {', '.join(available)}, "
                     "verdict, all, lease")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in names:
        for command in available[name]:
            command = dry(command) if args.dry_run else command
            started = time.perf_counter()
            print(f"[{name}] {' '.join(command)}", flush=True)
            failed += subprocess.run(command, cwd=ROOT, env=child_environment()).returncode != 0
            print(f"[{name}] {time.perf_counter() - started:.0f} s", flush=True)
    if args.piece == "all" and not args.dry_run:
        failed += _run_verdict(args.out, tag) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

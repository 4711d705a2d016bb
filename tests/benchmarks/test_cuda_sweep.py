"""benchmarks/cuda_sweep.py: its pieces, the dry run on CPU, the acceptance verdict, and a
clear refusal without a GPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.benchmarks import scripts

SCRIPT = scripts.BENCHMARKS / "cuda_sweep.py"


def sweep():
    return scripts.load("cuda_sweep")


def option(command, flag):
    """The values after ``flag`` in ``command``."""
    start = command.index(flag) + 1
    end = next((i for i in range(start, len(command)) if command[i].startswith("--")),
               len(command))  # fmt: skip
    return command[start:end]


def test_pieces_cover_tests_every_dtype_and_mode_cam_danet_and_training_steps(tmp_path):
    pieces = sweep().pieces(tmp_path, "cuda-test-torch0.0")
    pam = {f"pam-{dtype}-{mode}" for dtype in ("float32", "bfloat16", "float16")
           for mode in ("forward", "train")}  # fmt: skip
    assert (
        set(pieces)
        == {
            "tests",
            "cam",
            "danet-bfloat16",
            "danet-float32",
            "steps-danet-float32",
            "steps-danet-bfloat16",
            "steps-ccnet",
        }
        | pam
    )
    for commands in pieces.values():
        for command in commands:
            assert any(str(tmp_path) in part for part in command), command  # all in --out
            if "--stem" in command:
                assert "cuda-test-torch0.0" in option(command, "--stem")[0]
    command = pieces["pam-bfloat16-train"][0]
    assert option(command, "--sizes") == ["4096", "16384", "32768", "65536"]
    assert option(command, "--dtypes") == ["bfloat16"] and option(command, "--modes") == ["train"]
    # The verdict's rows first (a piece stopped midway keeps them); the hybrid in training.
    assert option(command, "--backends") == ["bmm", "auto", "direct", "chunked", "sdpa"]
    assert "--chunked-backward" in command
    assert "--chunked-backward" not in pieces["pam-bfloat16-forward"][0]
    assert option(command, "--value-splits") == ["1", "2", "4", "8"]
    assert option(command, "--kernels") == ["cudnn", "flash", "efficient"]
    for name in ("steps-danet-float32", "steps-ccnet"):
        steps = pieces[name][0]
        assert option(steps, "--sizes") == ["769x769", "1024x2048"]
        assert option(steps, "--batch") == ["2"]
    assert option(pieces["steps-ccnet"][0], "--models") == ["ccnet"]


def test_pam_dtype_names_both_of_its_modes(tmp_path):
    groups = sweep().aliases(list(sweep().pieces(tmp_path, "tag")))
    assert groups == {f"pam-{dtype}": [f"pam-{dtype}-forward", f"pam-{dtype}-train"]
                      for dtype in ("float32", "bfloat16", "float16")}  # fmt: skip


def test_dry_run_shrinks_every_benchmark_to_toy_sizes_on_the_cpu(tmp_path):
    pieces = sweep().pieces(tmp_path, "dryrun")
    pam = sweep().dry(pieces["pam-float16-train"][0])
    assert option(pam, "--device") == ["cpu"] and option(pam, "--sizes") == ["64"]
    assert option(pam, "--channels") == ["16"] and option(pam, "--repeats") == ["1"]
    assert option(pam, "--value-splits") == ["2"] and option(pam, "--kernels") == ["efficient"]
    assert option(pam, "--dtypes") == ["float16"]  # what the piece measures is kept
    steps = sweep().dry(pieces["steps-ccnet"][0])
    assert option(steps, "--backbones") == ["resnet18"] and option(steps, "--sizes") == ["64x64"]
    assert option(steps, "--batch") == ["2"]
    tests = pieces["tests"][0]
    assert sweep().dry(tests) == tests  # the CUDA tests skip themselves without a GPU


def test_list_prints_every_command():
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--list"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert "pam-bfloat16-train:" in completed.stdout and "bench_precision.py" in completed.stdout
    assert "bench_steps.py" in completed.stdout and "verdict:" in completed.stdout
    assert "pam-float16: pam-float16-forward + pam-float16-train" in completed.stdout


def test_a_piece_runs_dry_on_the_cpu_and_writes_its_table(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "pam-float32-forward", "--dry-run", "--out",
         str(tmp_path)], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    (table,) = tmp_path.glob("attention-dryrun-*-pam-float32-forward.json")
    cases = json.loads(table.read_text())["cases"]
    status = {(c["backend"], c["value_split"], c["kernel"], c["chunk_size"]): c["status"]
              for c in cases}  # fmt: skip
    assert status == {
        ("bmm", None, None, None): "ok",
        ("chunked", None, None, None): "ok",
        ("chunked", None, None, 32): "ok",
        ("sdpa", None, None, None): "ok",
        ("sdpa", 2, None, None): "ok",
        ("sdpa", None, "efficient", None): "rejected",  # a CUDA kernel, on the CPU
        ("sdpa", 2, "efficient", None): "rejected",
        ("auto", None, None, None): "ok",
        ("direct", None, None, None): "rejected",
    }
    plans = {c["value_split"]: c["ran_plan"] for c in cases
             if c["backend"] == "sdpa" and c["status"] == "ok"}  # fmt: skip
    assert plans[None] == "flash 8x2/2" and plans[2] == "flash 2x8/8"  # C=16: 2/16 widths
    assert (tmp_path / table.name.replace(".json", ".md")).exists()


def fake_table(path, auto_ms, auto_mib, bmm_ms=300.0, bmm_mib=12000.0, direct_ms=60.0):
    def case(backend, ms, mib, status="ok", positions=32768):
        return {"backend": backend, "dtype": "bfloat16", "mode": "train",
                "positions": positions, "value_split": None, "kernel": None, "status": status,
                "seconds": ms / 1e3, "peak_bytes": mib * 2**20, "ran_backend": "chunked",
                "ran_plan": None}  # fmt: skip

    hybrid = {**case("sdpa", 30.0, 300.0), "chunked_backward": True, "ran_plan": "flash 2x256/256"}
    cases = [case("bmm", bmm_ms, bmm_mib), case("auto", auto_ms, auto_mib),
             case("direct", direct_ms, 500.0), case("auto", 1.0, 1.0, positions=4096),
             hybrid]  # fmt: skip
    path.write_text(json.dumps({"device": "NVIDIA H200", "torch": "2.14", "cases": cases}))
    return path


def test_verdict_holds_only_when_every_target_is_met(tmp_path):
    verdict = sweep().verdict
    holds, report = verdict(fake_table(tmp_path / "a.json", auto_ms=40.0, auto_mib=400.0))
    assert holds and "Holds: yes" in report and "NVIDIA H200" in report
    assert "time bmm / auto = 7.500" in report
    # Every package row at N=32768, fastest first (direct is the reference, not a row).
    listing = report.split("fastest first:")[1].strip().splitlines()
    assert listing == ["- sdpa [chunked backward] (flash 2x256/256): 30.0 ms, 300 MiB",
                       "- auto -> chunked: 40.0 ms, 400 MiB",
                       "- bmm: 300.0 ms, 12000 MiB"]  # fmt: skip
    slow = fake_table(tmp_path / "b.json", auto_ms=50.0, auto_mib=400.0)  # 1.2x direct
    holds, report = verdict(slow)
    assert not holds and "time direct / auto = 1.200 (needs >= 1.3): **no**" in report
    hungry = fake_table(tmp_path / "c.json", auto_ms=40.0, auto_mib=700.0)  # 0.058x bmm
    assert not verdict(hungry)[0]


def test_verdict_without_the_rows_is_not_decided(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"device": "x", "torch": "y", "cases": []}))
    holds, report = sweep().verdict(path)
    assert not holds and "not decided" in report and "auto, bmm, direct" in report


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPU")
def test_a_piece_without_a_gpu_is_refused_clearly():
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "pam-bfloat16-train"], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert completed.returncode == 2
    assert "no CUDA GPU" in completed.stderr and "--dry-run" in completed.stderr


def quick_pieces(work, tag):
    """Stand-in pieces: one writes a table, one fails, one starts a child and outlives the lease."""
    write = f"import pathlib; pathlib.Path({str(work)!r}, 'table-{tag}.md').write_text('x')"
    # The sleeper starts a child of its own (as pytest starts workers) and writes its pid.
    sleeper = (
        "import pathlib, subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
        f"'import time; time.sleep(600)']); pathlib.Path({str(work)!r}, 'child.pid')"
        ".write_text(str(child.pid)); time.sleep(600)"
    )
    return {
        "tests": [[sys.executable, "-c", write]],
        "pam-bfloat16-train": [[sys.executable, "-c", "import sys; sys.exit(3)"]],
        "cam": [[sys.executable, "-c", sleeper]],
        "steps-ccnet": [[sys.executable, "-c", "pass"]],
    }


def test_lease_runs_pieces_in_order_stops_the_late_one_and_packs_three_files(tmp_path, monkeypatch):
    import tarfile
    import time

    module = sweep()
    monkeypatch.setattr(module, "pieces", quick_pieces)
    monkeypatch.setattr(module, "LEASE_ORDER", ("tests", "pam-bfloat16-train", "verdict", "cam",
                                                "steps-ccnet"))  # fmt: skip
    monkeypatch.setattr(module, "LEASE_MINIMUM_SECONDS", 1.0)
    monkeypatch.setattr(module, "LEASE_PIECE_SHARE", 1.0)
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    fake_table(work / "attention-tag-pam-bfloat16-train.json", auto_ms=40.0, auto_mib=400.0)
    started = time.monotonic()
    code = module.lease(out, work, "tag", minutes=0.25)
    assert time.monotonic() - started < 60  # the sleeper and its child were stopped
    assert code == 1  # one piece failed, one was stopped
    assert sorted(p.name for p in out.iterdir()) == [
        "acceptance-tag.md", "cuda-sweep-tag.tar.gz", "lease-tag.md"]  # fmt: skip
    summary = (out / "lease-tag.md").read_text()
    rows = [line.split(" | ")[:2] for line in summary.splitlines() if line.startswith("| ")][1:]
    assert rows == [
        ["| tests", "ok"],
        ["| pam-bfloat16-train", "failed (exit code 3)"],
        ["| verdict", "ok (target met)"],
        ["| cam", "stopped: out of time"],
        ["| steps-ccnet", "not started: no time left"],
    ]
    assert "Holds: yes" in (out / "acceptance-tag.md").read_text()
    with tarfile.open(out / "cuda-sweep-tag.tar.gz") as archive:
        names = set(archive.getnames())
    assert {"table-tag.md", "environment-tag.txt", "lease-tag.log", "lease-tag.md",
            "acceptance-tag.md", "attention-tag-pam-bfloat16-train.json"} <= names  # fmt: skip
    assert "python " in (work / "environment-tag.txt").read_text()
    status = Path("/proc", (work / "child.pid").read_text(), "status")
    for _ in range(50):  # the killed child is gone, or a zombie nobody has reaped yet
        if not status.exists() or "State:\tZ" in status.read_text():
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the stopped piece's child still runs")


def test_lease_refuses_a_work_folder_inside_out(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "lease", "--dry-run", "--out", str(tmp_path),
         "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 2
    assert "must lie outside --out" in completed.stderr

"""benchmarks/cuda_sweep.py: its pieces, and a clear refusal without a GPU."""

import subprocess
import sys

import pytest
import torch

from tests.benchmarks import scripts

SCRIPT = scripts.BENCHMARKS / "cuda_sweep.py"


def test_pieces_cover_tests_every_dtype_cam_and_danet(tmp_path):
    sweep = scripts.load("cuda_sweep")
    pieces = sweep.pieces(tmp_path, "cuda-test-torch0.0")
    assert set(pieces) == {"tests", "pam-bfloat16", "pam-float16", "pam-float32", "cam",
                           "danet-bfloat16", "danet-float32"}  # fmt: skip
    for commands in pieces.values():
        for command in commands:
            assert any(str(tmp_path) in part for part in command), command  # all in --out
            if "bench_attention.py" in command[1] or "bench_danet.py" in command[1]:
                stem = command[command.index("--stem") + 1]
                assert stem.startswith(("attention-cuda-test", "danet-cuda-test")), stem
    assert "bfloat16" in pieces["pam-bfloat16"][0] and "float16" in pieces["pam-float16"][0]


def test_list_prints_every_command():
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--list"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert "pam-bfloat16:" in completed.stdout and "bench_precision.py" in completed.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPU")
def test_a_piece_without_a_gpu_is_refused_clearly():
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "pam-bfloat16"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 2
    assert "no CUDA GPU" in completed.stderr

"""benchmarks/bench_blocks.py: the N x N criss-cross baseline, the suite and the table."""

import json
import os
import subprocess
import sys

import torch

from attnblocks import CrissCrossAttention
from tests.benchmarks import scripts
from tests.reference import relative_error


def load_script():
    return scripts.load("bench_blocks")


def test_dense_criss_cross_computes_our_block():
    script = load_script()
    block = CrissCrossAttention(16, gamma_init=0.5)
    dense = script.DenseCrissCross(16)
    dense.load_state_dict(block.state_dict())
    x = torch.randn(2, 16, 5, 7)
    assert relative_error(dense(x), block(x)) < 1e-5


def test_cases_skip_what_has_no_n_by_n_form():
    script = load_script()
    args = script.parse_args(["--blocks", "context", "non_local_embedded_gaussian"])
    cases = script.make_cases(args)
    assert {(c.block, c.implementation) for c in cases} == {
        ("context", "ours"), ("context", "mmcv"), ("non_local_embedded_gaussian", "ours"),
        ("non_local_embedded_gaussian", "nxn"), ("non_local_embedded_gaussian", "mmcv"),
    }  # fmt: skip


def test_oom_detail_sizes_the_batch_of_matrices():
    script = load_script()
    one = script.Case("non_local_embedded_gaussian", "nxn", "train", 128, 256, 512, 1)
    assert script.nxn_size(one) == "one N x N matrix is 4.0 GiB"  # 32768^2 float32
    two = script.Case("non_local_embedded_gaussian", "nxn", "train", 128, 256, 512, 2)
    assert script.nxn_size(two) == "the batch's 2 N x N matrices are 8.0 GiB"


def test_table_compares_with_ours():
    script = load_script()

    def result(implementation, seconds, peak, status="ok"):
        case = script.Case("criss_cross", implementation, "train", 128, 256, 512, 1)
        return script.Result(**vars(case), status=status, seconds=seconds, peak_bytes=peak)

    table = script.markdown_table(
        [result("ours", 2.0, 2**30), result("mmcv", 3.0, 2**29), result("nxn", None, None, "oom")],
        "header",
    )
    assert (
        "| criss_cross | train | 128 x 256 (32768) | 512 | mmcv | 3,000 | 512 | 1.50 | 0.50 | ok |"
        in table
    )
    assert "| nxn | - | - | - | - | oom:  |" in table


def test_quick_run_writes_the_tables(tmp_path):
    # A child process: the cases fork, and this test process has run torch's thread pools.
    command = [sys.executable, str(scripts.BENCHMARKS / "bench_blocks.py"), "--quick",
               "--implementations", "ours", "nxn", "--repeats", "1", "--out", str(tmp_path),
               "--stem", "quick"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(scripts.BENCHMARKS.parent)}
    subprocess.run(command, check=True, capture_output=True, env=env, timeout=300)
    assert (tmp_path / "quick.md").read_text().count("| ok |") == 5
    cases = json.loads((tmp_path / "quick.json").read_text())["cases"]
    assert {(c["block"], c["implementation"]) for c in cases} >= {("criss_cross", "nxn")}

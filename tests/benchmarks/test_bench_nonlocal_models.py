"""benchmarks/bench_nonlocal_models.py: the cases, the N x N skip rule, the table, a quick run."""

import json
import os
import subprocess
import sys

import torch

from tests.benchmarks import scripts


def load_script():
    return scripts.load("bench_nonlocal_models")


def test_cases_pair_ours_with_the_n_by_n_model_at_the_cityscapes_sizes():
    script = load_script()
    cases = script.make_cases(script.parse_args([]))
    assert {(c.model, c.implementation, c.height, c.width) for c in cases} == {
        (m, i, h, w) for m in ("nlnet", "dnlnet") for i in ("ours", "nxn")
        for h, w in ((512, 1024), (1024, 2048))
    }  # fmt: skip
    whole = next(c for c in cases if c.height == 1024)
    assert whole.positions == 32768 and whole.nxn_bytes == 8 * 2**30  # two 4 GiB matrices


def test_models_use_the_backend_the_case_names():
    script = load_script()
    for implementation, backend in (("ours", "auto"), ("nxn", "bmm")):
        case = script.Case("dnlnet", implementation, 64, 64, "resnet18")
        model = script.build_model(case)
        assert model.head.attention.backend == backend and not model.training
        assert model.head.attention.conv_out.norm.weight.abs().sum() > 0  # the block counts


def test_n_by_n_cases_past_the_limit_are_not_run():
    script = load_script()
    args = script.parse_args(["--nxn-limit-gib", "8"])
    case = script.Case("nlnet", "nxn", 1024, 2048, "resnet50c")
    result = script.measure_isolated(case, args)  # returns before forking anything
    assert result.status == "skipped" and "two N x N matrices take 8 GiB" in result.detail


def test_table_compares_with_ours():
    script = load_script()

    def result(implementation, peak, status="ok", backend="chunked"):
        case = script.Case("nlnet", implementation, 1024, 2048, "resnet50c")
        return script.Result(**vars(case), status=status, seconds=100.0 if peak else None,
                             peak_bytes=peak, backend=backend)  # fmt: skip

    table = script.markdown_table(
        [result("ours", 2**30), result("nxn", None, "skipped", "")], "header"
    )
    assert "| nlnet | 1024 x 2048 | 32,768 | ours | chunked | 100.0 | 1,024 | 1.00 | ok |" in table
    assert "| nlnet | 1024 x 2048 | 32,768 | nxn | - | - | - | - | skipped:  |" in table


def test_quick_run_writes_the_tables(tmp_path):
    # A child process: the cases fork, and this test process has run torch's thread pools.
    command = [sys.executable, str(scripts.BENCHMARKS / "bench_nonlocal_models.py"), "--quick",
               "--backbone", "resnet18", "--models", "dnlnet", "--out", str(tmp_path),
               "--stem", "quick"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(scripts.BENCHMARKS.parent)}
    subprocess.run(command, check=True, capture_output=True, env=env, timeout=300)
    assert (tmp_path / "quick.md").read_text().count("| ok |") == 2
    cases = json.loads((tmp_path / "quick.json").read_text())["cases"]
    assert {(c["implementation"], c["backend"]) for c in cases} == {("ours", "bmm"), ("nxn", "bmm")}
    assert torch.tensor([c["peak_bytes"] for c in cases]).gt(0).all()

"""benchmarks/bench_attention.py at a tiny size: its outputs and the agreement of its backends."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from attnblocks.functional import _precision
from tests.benchmarks import scripts
from tests.reference import relative_error

SCRIPT = scripts.BENCHMARKS / "bench_attention.py"
CASE_FIELDS = {
    "block", "backend", "chunk_size", "dtype", "mode", "positions", "height", "width",
    "channels", "batch", "device", "status", "detail", "ran_backend", "seconds", "repeats",
    "peak_bytes", "memory_method", "gflop", "gflops", "value_path", "value_split", "kernel",
    "ran_plan", "probe",
}  # fmt: skip


def load_script():
    return scripts.load("bench_attention")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    command = [
        sys.executable, str(SCRIPT), "--device", "cpu", "--sizes", "64", "256",
        "--channels", "32", "--dtypes", "float32", "--chunk-sizes", "48",
        "--repeats", "1", "--out", str(out), "--stem", "tiny",
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return out, completed.stdout


def test_writes_json_table_and_prints_it(run):
    out, stdout = run
    payload = json.loads((out / "tiny.json").read_text())
    assert {"device", "torch", "command", "seconds", "ceiling_gflops", "cases"} <= payload.keys()
    assert payload["ceiling_gflops"]["float32"] > 0
    cases = payload["cases"]
    # PAM: bmm, chunked (default and 48), sdpa, auto; CAM: bmm, auto; 2 modes, 2 sizes.
    assert len(cases) == (5 + 2) * 2 * 2
    for case in cases:
        assert set(case) == CASE_FIELDS
        assert case["value_path"] == "measured"
        assert case["status"] == "ok", case
        assert case["seconds"] > 0 and case["peak_bytes"] >= 0 and case["gflops"] > 0
        assert case["memory_method"].startswith("VmHWM")
    table = (out / "tiny.md").read_text()
    assert table.count("\n| pam |") == 20 and table.count("\n| cam |") == 8
    assert "| pam | chunked | 48 | float32 | train | 256 (16x16) |" in stdout


def test_benchmarked_backends_agree_with_bmm(run):
    out, _ = run
    script = load_script()
    outputs = {}
    for case_dict in json.loads((out / "tiny.json").read_text())["cases"]:
        fields = {f.name for f in dataclasses.fields(script.Case)}
        case = script.Case(**{k: v for k, v in case_dict.items() if k in fields})
        module, x, _ = script.build(case)
        with torch.no_grad():
            outputs[(case.block, case.backend, case.chunk_size, case.positions)] = module(x)
    for (block, backend, chunk, positions), output in outputs.items():
        expected = outputs[(block, "bmm", None, positions)]
        assert relative_error(output, expected) < 1e-5, (block, backend, chunk, positions)


def test_flop_count_of_pam_forward():
    script = load_script()
    case = script.Case("pam", "bmm", None, "float32", "forward", 100, 10, 10, 16, 2, "cpu")
    # 1x1 convs to 2 + 2 + 16 channels, then q k^T (d=2) and attention @ v (16 channels).
    expected = 2 * (2 * 100 * 16 * 20 + 2 * 100 * 100 * 2 + 2 * 100 * 100 * 16)
    assert script.model_gflop(case) == pytest.approx(expected / 1e9)
    assert script.model_gflop(dataclasses.replace(case, mode="train")) == pytest.approx(
        3 * expected / 1e9
    )


@pytest.mark.parametrize("value_path", ["low", "float32"])
def test_forced_value_path_reaches_the_rule_and_the_table(monkeypatch, value_path):
    script = load_script()
    # A fresh cache, so that forcing here does not leak into other tests.
    monkeypatch.setattr(_precision, "_LOW_PRECISION_IS_FASTER", {})
    case = script.Case("pam", "chunked", None, "bfloat16", "forward", 64, 8, 8, 16, 1, "cpu",
                       value_path)  # fmt: skip
    result = script.Result(**script.measure_case(case, repeats=1, long_case_seconds=1.0))
    assert result.status == "ok"
    probe = torch.zeros(2, device="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = torch.bfloat16 if value_path == "low" else torch.float32
        assert _precision.value_path_dtype(probe, torch.float32) == expected
    table = script.markdown_table([result], {}, "header")
    assert f"| chunked [{value_path} value path] |" in table


@pytest.mark.parametrize(
    ("value_split", "kernel", "status", "plan", "label"),
    [
        (None, None, "ok", "flash 8x2/2", "| sdpa -> flash 8x2/2 |"),
        (2, None, "ok", "flash 2x8/8", "| sdpa [split 2] -> flash 2x8/8 |"),
        (None, "efficient", "rejected", None, "| sdpa [efficient] |"),  # a CUDA kernel
    ],
)  # fmt: skip
def test_sdpa_variants_report_the_plan_that_ran(value_split, kernel, status, plan, label):
    script = load_script()
    case = script.Case("pam", "sdpa", None, "float32", "forward", 64, 8, 8, 16, 1, "cpu",
                       "measured", value_split, kernel)  # fmt: skip
    result = script.Result(**script.measure_case(case, repeats=1, long_case_seconds=1.0))
    assert (result.status, result.ran_plan) == (status, plan)
    assert label in script.markdown_table([result], {}, "header")

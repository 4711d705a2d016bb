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
    "ran_plan", "probe", "chunked_backward",
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
    ("value_split", "kernel", "hybrid", "status", "plan", "label"),
    [
        (None, None, False, "ok", "flash 8x2/2", "| sdpa -> flash 8x2/2 |"),
        (2, None, False, "ok", "flash 2x8/8", "| sdpa [split 2] -> flash 2x8/8 |"),
        (None, "efficient", False, "rejected", None, "| sdpa [efficient] |"),  # a CUDA kernel
        (None, None, True, "ok", "flash 8x2/2", "| sdpa [chunked backward] -> flash 8x2/2 |"),
        (None, "efficient", True, "rejected", None, "| sdpa [efficient, chunked backward] |"),
    ],
)  # fmt: skip
def test_sdpa_variants_report_the_plan_that_ran(value_split, kernel, hybrid, status, plan, label):
    script = load_script()
    case = script.Case("pam", "sdpa", None, "float32", "train", 64, 8, 8, 16, 1, "cpu",
                       "measured", value_split, kernel, hybrid)  # fmt: skip
    result = script.Result(**script.measure_case(case, repeats=1, long_case_seconds=1.0))
    assert (result.status, result.ran_plan) == (status, plan)
    assert label in script.markdown_table([result], {}, "header")


def test_the_chunked_backward_cases_run_the_fused_forward_with_the_chunked_backward(monkeypatch):
    from attnblocks.functional import _fused_forward

    script = load_script()
    ran = []
    real = _fused_forward.backward_from_log_sum_exp

    def counted(*args, **kwargs):
        ran.append(kwargs.get("normalise_rows"))
        return real(*args, **kwargs)

    monkeypatch.setattr(_fused_forward, "backward_from_log_sum_exp", counted)
    case = script.Case("pam", "sdpa", None, "float32", "train", 64, 8, 8, 16, 1, "cpu",
                       "measured", None, None, True)  # fmt: skip
    assert script.measure_case(case, repeats=1, long_case_seconds=1.0)["status"] == "ok"
    assert ran and all(ran)  # the hybrid's backward ran (small warm-up, warm-up, timed run)
    args = script.parse_args(["--chunked-backward", "--blocks", "pam", "--backends", "sdpa",
                              "--kernels", "flash", "--sizes", "64"])  # fmt: skip
    variants = [(c.mode, c.variant) for c in script.make_cases(args)]
    assert variants.count(("train", "sdpa [chunked backward]")) == 2  # float32 and bfloat16
    assert variants.count(("train", "sdpa [flash, chunked backward]")) == 2
    assert not [v for mode, v in variants if mode == "forward" and "chunked backward" in v]


def test_a_run_stopped_midway_keeps_the_cases_it_measured(monkeypatch, tmp_path):
    script = load_script()
    measured = []

    def fake_measure(case, repeats, long_case_seconds):
        if len(measured) == 3:
            raise KeyboardInterrupt  # the lease stops the piece here
        measured.append(case)
        fields = dict(seconds=0.01, repeats=1, peak_bytes=1, gflop=1.0, gflops=100.0)
        return script.Result(**dataclasses.asdict(case), **fields)

    monkeypatch.setattr(script, "measure_isolated", fake_measure)
    monkeypatch.setattr(script, "measure_ceilings", lambda device, dtypes: {"float32": 1.0})
    with pytest.raises(KeyboardInterrupt):
        script.main(["--device", "cpu", "--blocks", "pam", "--sizes", "64", "--dtypes",
                     "float32", "--out", str(tmp_path), "--stem", "stopped"])  # fmt: skip
    payload = json.loads((tmp_path / "stopped.json").read_text())
    assert [case["backend"] for case in payload["cases"]] == [c.backend for c in measured]
    assert payload["planned_cases"] > 3
    table = (tmp_path / "stopped.md").read_text()
    assert f"(partial: 3 of {payload['planned_cases']} cases)" in table
    assert "matmul ceiling (GFLOP/s): not yet measured" in table  # measured after the cases

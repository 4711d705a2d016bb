"""benchmarks/bench_steps.py: its cases, one CCNet step measured in-process, its table."""

import argparse

import pytest

from tests.benchmarks import scripts


def load_script():
    return scripts.load("bench_steps")


def test_cases_run_danet_per_backend_and_ccnet_once():
    script = load_script()
    args = script.parse_args(["--device", "cpu", "--models", "danet", "ccnet", "--backbones",
                              "resnet18", "--sizes", "1024x2048", "769x769", "--dtypes",
                              "float32", "bfloat16"])  # fmt: skip
    cases = script.make_cases(args)
    danet = [c for c in cases if c.model == "danet"]
    ccnet = [c for c in cases if c.model == "ccnet"]
    assert len(danet) == 4 * 2 * 2 and {c.backend for c in danet} == set(script.BACKENDS)
    assert len(ccnet) == 2 * 2 and {c.backend for c in ccnet} == {"-"}
    assert all(c.batch == 2 for c in cases)  # the default batch of the training steps
    assert [(c.height, c.width) for c in ccnet[:2]] == [(769, 769), (1024, 2048)]  # small first
    with pytest.raises(argparse.ArgumentTypeError, match="a size is HxW"):
        script.parse_size("769")


def test_one_ccnet_training_step_is_measured_and_tabled():
    script = load_script()
    case = script.Case("ccnet", "resnet18", "-", "float32", 64, 64, 2, "cpu")
    result = script.Result(**script.measure_case(case, repeats=1, long_case_seconds=1.0))
    assert result.status == "ok" and result.seconds > 0 and result.images_per_second > 0
    bmm = script.Result(**{**vars(result), "model": "danet", "backend": "bmm"})
    table = script.markdown([bmm, result], "header")
    assert "| ccnet | resnet18 | float32 | 64 x 64 | - |" in table
    assert "| 1.00 |" in table  # CCNet's time against DANet's bmm row of the same setting

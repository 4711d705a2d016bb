"""benchmarks/bench_danet.py: size parsing and the largest-image summary (no model is run)."""

import argparse

import pytest

from tests.benchmarks import scripts


def load_script():
    return scripts.load("bench_danet")


def test_parse_size():
    script = load_script()
    assert script.parse_size("512x1024") == (512, 1024)
    with pytest.raises(argparse.ArgumentTypeError, match="a size is HxW"):
        script.parse_size("512")


def test_table_reports_the_largest_image_that_fits():
    script = load_script()

    def result(backend, height, width, status="ok"):
        case = script.Case("resnet50", backend, "train", "float32", height, width, 1, "cpu")
        measured = dict(seconds=2.0, repeats=1, images_per_second=0.5, peak_bytes=2**30)
        return script.Result(**vars(case), status=status, **(measured if status == "ok" else {}))

    results = [
        result("bmm", 512, 1024), result("bmm", 1024, 2048, status="oom"),
        result("chunked", 512, 1024), result("chunked", 1024, 2048),
    ]  # fmt: skip
    table = script.markdown(results, "header")
    assert "| resnet50 | train | float32 | bmm | 512 x 1024 |" in table
    assert "| resnet50 | train | float32 | chunked | 1024 x 2048 |" in table
    assert "| resnet50 | train | float32 | 1024 x 2048 | bmm | - | - | - | oom:" in table

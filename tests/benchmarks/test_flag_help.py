"""Every flag of the benchmark and example scripts says what it does in ``--help``."""

import argparse

import pytest

from tests.benchmarks.scripts import load


class _Parsed(Exception):
    """Raised instead of parsing: the parser a script built is all the test needs."""


def built_parser(run, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``run()`` builds, caught at its ``parse_args`` (nothing runs)."""
    seen = []

    def capture(parser, *args, **kwargs):
        seen.append(parser)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed):
        run()
    return seen[0]


def flags_without_help(parser: argparse.ArgumentParser) -> list[str]:
    return [
        "/".join(action.option_strings) or action.dest
        for action in parser._actions  # every option and positional
        if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()
    ]


@pytest.mark.parametrize(
    "script", ["bench_attention", "bench_blocks", "bench_danet", "bench_precision", "cuda_sweep"]
)
def test_every_benchmark_flag_has_a_help_text(script, monkeypatch):
    module = load(script)
    run = getattr(module, "parse_args", None) or module.main
    parser = built_parser(lambda: run([]), monkeypatch)
    assert flags_without_help(parser) == []


@pytest.mark.parametrize("script", ["train", "evaluate", "segment", "visualize_attention"])
def test_every_example_flag_has_a_help_text(script, monkeypatch):
    module = __import__(f"examples.{script}", fromlist=["_"])
    run = getattr(module, "parse_args", None) or module.main
    parser = built_parser(lambda: run([]), monkeypatch)
    assert flags_without_help(parser) == []

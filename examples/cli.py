"""Command-line plumbing shared by the example scripts: help format, value checks, CPUs."""

from __future__ import annotations

import argparse
import ast
import difflib
import math
import os
from collections.abc import Callable
from typing import Any

import torch


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default once: appended to its help unless the help already says it.

    Options without a meaningful default (None, a False flag) get nothing appended.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        no_default = action.default in (None, False, argparse.SUPPRESS)
        if no_default or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers(limit: int = 4) -> int:
    """Data-loading processes per training process: up to ``limit``, at most its share of CPUs.

    More workers than CPUs only makes the DataLoader warn and the processes compete.

    Args:
        limit: the most workers wanted on a large machine.
    """
    processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun
    return max(0, min(limit, available_cpus() // processes_here))


def _number(text: str, kind: type, what: str, valid: Callable[[Any], bool]) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    return _number(text, int, "a positive integer", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    return _number(text, int, "an integer of at least 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    return _number(text, float, "a positive number", lambda v: 0 < v < math.inf)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number of at least 0."""
    return _number(text, float, "a number of at least 0", lambda v: 0 <= v < math.inf)


def fraction(text: str) -> float:
    """argparse type: a number from 0 to 1."""
    return _number(text, float, "a number from 0 to 1", lambda v: 0 <= v <= 1)


def momentum(text: str) -> float:
    """argparse type: a number from 0 up to (not including) 1."""
    return _number(text, float, "a number from 0 up to, not including, 1", lambda v: 0 <= v < 1)


def key_value(text: str) -> tuple[str, Any]:
    """argparse type: ``KEY=VALUE``, the value a Python literal (``0.2``, ``True``, ``(1, 2)``)
    or else the text itself (``bmm``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY a name, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def device_problem(name: str) -> str | None:
    """What is wrong with a ``--device`` value here (None: it can be used).

    Args:
        name: a torch device string: ``cpu``, ``cuda``, ``cuda:1``...
    """
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"--device {name!r} is not a device name; expected cpu, cuda or cuda:N"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {name}: torch sees no CUDA GPU on this machine; use --device cpu"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return (f"--device {name}: there is no GPU {device.index}; this machine has "
                    f"{torch.cuda.device_count()}")  # fmt: skip
    elif device.type != "cpu":
        module = getattr(torch, device.type, None)
        available = getattr(module, "is_available", None)
        if available is None or not available():
            return f"--device {name}: {device.type} is not available here; use --device cpu"
    return None


def backbone_problem(name: str) -> str | None:
    """What is wrong with a ``--backbone`` value (None: timm knows the name).

    Args:
        name: a timm model name, with or without a pretrained tag (``resnet50.a1_in1k``).
    """
    import timm

    if timm.is_model(name):
        return None
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    guess = f"; did you mean {', '.join(close)}?" if close else ""
    return f"--backbone {name!r} is not a timm model name{guess} (timm.list_models() lists them)"

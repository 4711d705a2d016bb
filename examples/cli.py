"""Command-line plumbing shared by the example scripts."""

from __future__ import annotations

import argparse
import os


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

"""Session settings: under pytest-xdist, each worker's torch takes its share of the cores.

``pytest`` runs with ``-n auto --dist loadfile`` (setup.cfg): one worker per core, each test
file on one worker (so a module builds its models once). Without this, every worker's
torch would start a thread per core and the workers would fight over them.
"""

from __future__ import annotations

import os

import torch


def pytest_configure(config) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0))
        torch.set_num_threads(max(1, cores // workers))

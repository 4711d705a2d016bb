"""Runs shared by the example tests: each is trained once per test session."""

from pathlib import Path

import pytest

from tests.examples.runs import run_train


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A finished tiny synthetic run with pictures, checkpoints every two iterations.

    Also what an interrupted and resumed run must end as: checkpoints and pictures
    draw no random numbers.
    """
    out = tmp_path_factory.mktemp("run")
    run_train(out, "--checkpoint-every", "2")
    return out

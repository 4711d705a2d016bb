"""README's Python examples run as written, each alone in its own process, as a reader would.

A block preceded by ``<!-- not run by tests/test_readme.py: why -->`` needs what users
bring (the authors' checkpoints, mmcv weights) or a download; tests elsewhere cover it.
Every other block runs by itself (no names from an earlier block, see
``tests/readme_runner.py``) in a folder that holds what the blocks read: each released
``.pth`` file they name, made from the mmseg fixture of its model (DANet's or CCNet's
fill-rule weights), and each image they name.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnblocks.pretrained import find_mmseg_checkpoint
from tests.compat.mmseg_reference import CCNET, DANET, fixture_checkpoint

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BLOCK = re.compile(r"(<!-- not run by tests/test_readme\.py: [^>]*-->\n)?```python\n(.*?)```", re.S)
BLOCKS = [(bool(skip), code) for skip, code in BLOCK.findall(README.read_text())]
RUNNABLE = [(index, code) for index, (skip, code) in enumerate(BLOCKS) if not skip]
FIXTURES = {"danet": DANET, "ccnet": CCNET}


def _first_line(code: str) -> str:
    """A block's first statement, for the test id."""
    line = next(
        line for line in code.splitlines() if line and not line.startswith(("import", "from"))
    )
    return re.sub(r"\W+", "_", line)[:40]


@pytest.fixture(scope="module")
def readers_folder(tmp_path_factory) -> Path:
    """The files the blocks name: releases made from the fixtures, images of a street."""
    folder = tmp_path_factory.mktemp("readme")
    text = "\n".join(code for _, code in RUNNABLE)
    for file_name in set(re.findall(r'from_mmseg\("([^"]+\.pth)"\)', text)):
        release = find_mmseg_checkpoint(file_name)
        assert release is not None, f"{file_name} is not a release's file name"
        torch.save(fixture_checkpoint(FIXTURES[release.model]), folder / file_name)
    # a wide strip: Cityscapes' test resize (fit into 2048 x 1024) only enlarges it 1.28x
    pixels = np.random.default_rng(0).integers(0, 256, (16, 1600, 3), dtype=np.uint8)
    for image_name in set(re.findall(r'predict_image\(\s*"([^"]+)"', text)):
        Image.fromarray(pixels).save(folder / image_name)
    return folder


@pytest.fixture(scope="module")
def block_runs(readers_folder) -> dict[int, tuple[int, str]]:
    """Every runnable block's exit status and output, each block alone in its own process.

    ``tests/readme_runner.py``, a fresh interpreter, imports torch, timm and attnblocks
    once and forks a child per block (one per CPU at a time, one thread each), which runs
    the block in a namespace of its own.
    """
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    environment = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "readme_runner.py"), str(workers)],
        input=json.dumps(RUNNABLE), cwd=readers_folder, env=environment, capture_output=True,
        text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    statuses = {int(index): status for index, status in json.loads(result.stdout).items()}
    return {
        index: (statuses[index], (readers_folder / f"block-{index}.log").read_text())
        for index, _ in RUNNABLE
    }


def test_the_readme_has_runnable_and_explained_blocks():
    assert len(RUNNABLE) >= 10 and len(RUNNABLE) < len(BLOCKS)


@pytest.mark.parametrize("index", [i for i, _ in RUNNABLE],
                         ids=[f"{i}-{_first_line(code)}" for i, code in RUNNABLE])  # fmt: skip
def test_each_block_runs_alone_in_its_own_process(index, block_runs):
    status, output = block_runs[index]
    assert status == 0, f"README.md python block {index}:\n{output[-3000:]}"


def test_a_block_using_an_earlier_blocks_name_fails(readers_folder):
    """The runner's namespaces are the blocks' own: the check above can fail."""
    blocks = [[0, "import torch\nx = torch.ones(1)"], [1, "print(x)"]]
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "readme_runner.py"), "1"], input=json.dumps(blocks),
        cwd=readers_folder, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert json.loads(result.stdout) == {"0": 0, "1": 1}
    assert "NameError: name 'x' is not defined" in (readers_folder / "block-1.log").read_text()

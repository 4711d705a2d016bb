"""README's Python examples run as written (those that need the authors' checkpoints aside)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
# Blocks that load the authors' checkpoints need files users bring; their key mapping is tested
# in tests/test_compat.py and tests/models/test_danet_head.py.
RUNNABLE = [block for block in BLOCKS if "their_" not in block]


def test_readme_has_examples():
    assert len(RUNNABLE) >= 2


@pytest.mark.parametrize("index", range(len(RUNNABLE)))
def test_readme_example_runs(index):
    exec(compile(RUNNABLE[index], f"README.md block {index}", "exec"), {})

"""README's Python examples run as written, in order, sharing one namespace like a notebook.

A block preceded by ``<!-- not run by tests/test_readme.py: why -->`` needs files users
bring (the authors' checkpoints); their key mapping is tested in tests/compat/.
"""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- not run by tests/test_readme\.py: [^>]*-->\n)?```python\n(.*?)```", re.S)
BLOCKS = [(bool(skip), code) for skip, code in BLOCK.findall(README.read_text())]


def test_readme_examples_run():
    runnable = [code for skip, code in BLOCKS if not skip]
    assert len(runnable) >= 5 and len(runnable) < len(BLOCKS)
    namespace: dict = {}
    for index, code in enumerate(runnable):
        exec(compile(code, f"README.md python block {index}", "exec"), namespace)

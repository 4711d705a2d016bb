"""The installed package: public names, version, typing marker."""

import re
from pathlib import Path

import attnblocks


def test_public_api():
    for name in ("PAM", "CAM", "DualAttention", "__version__"):
        assert name in attnblocks.__all__ and hasattr(attnblocks, name)
    assert re.fullmatch(r"\d+\.\d+\.\d+", attnblocks.__version__)


def test_ships_py_typed():
    assert (Path(attnblocks.__file__).parent / "py.typed").is_file()

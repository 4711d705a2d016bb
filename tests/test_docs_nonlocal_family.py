"""docs/models/nonlocal-family.md: its example runs, its release tables are the data file's."""

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attnblocks.models import DNLNet, base
from attnblocks.pretrained import MMSEG_CHECKPOINTS
from tests.models.nonlocal_family_checks import DNLNET, fixture_checkpoint

PAGE = Path(__file__).resolve().parents[1] / "docs" / "models" / "nonlocal-family.md"
MODELS = {"NLNet": "nlnet", "GCNet": "gcnet", "DNLNet": "dnlnet", "PSANet": "psanet"}


def test_release_tables_list_every_release_of_the_data_file():
    text = PAGE.read_text()
    for title, model in MODELS.items():
        section = text.split(f"### {title}\n", 1)[1].split("###", 1)[0]
        rows = re.findall(
            r"^\| `([^`]+)` \| [^|]+ \| [^|]+ \| [^|]+ \| ([\d.]+) \| ([\d.-]+) \|", section, re.M
        )  # the other cells: tests/pretrained/test_mmseg_checkpoints.py
        entries = [e for e in MMSEG_CHECKPOINTS.values() if e.model == model]
        assert [config for config, _, _ in rows] == [e.config for e in entries]
        for (_, miou, ms_flip), entry in zip(rows, entries):
            assert float(miou) == entry.miou
            assert ms_flip == ("-" if entry.miou_ms_flip is None else f"{entry.miou_ms_flip:.2f}")
        overview = re.search(rf"^\| `attnblocks.models.{title}` .* \| (\d+) \|$", text, re.M)
        assert int(overview[1]) == len(entries)


def test_the_loading_example_runs_on_a_fixture_checkpoint(tmp_path, monkeypatch):
    code = next(block for block in re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
                if "from_mmseg(" in block)  # fmt: skip
    release = re.search(r'from_mmseg\("([^"]+)"\)', code)[1]
    assert MMSEG_CHECKPOINTS[release].model == "dnlnet"
    fetched = []

    def download(name):
        fetched.append(name)
        return fixture_checkpoint(DNLNET)

    monkeypatch.setattr(base, "load_mmseg_checkpoint", download)
    monkeypatch.chdir(tmp_path)
    # a wide strip: Cityscapes' test resize (fit into 2048 x 1024) only enlarges it 1.28x
    pixels = np.random.default_rng(0).integers(0, 256, (16, 1600, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(re.search(r'predict_image\("([^"]+)"\)', code)[1])
    namespace: dict = {}
    exec(compile(code, str(PAGE), "exec"), namespace)
    assert fetched == [release] and isinstance(namespace["model"], DNLNet)
    labels = namespace["labels"]
    assert labels.shape == (16, 1600) and labels.dtype == torch.int64

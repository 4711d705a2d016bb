"""README's three-line "pretrained DANet on my image" example, run as written.

The released checkpoint is replaced by one made from the mmseg fixture, saved under the
file name the README uses (so ``from_mmseg`` also recognises the release); the image
is the user's.
"""

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.compat.mmseg_reference import fixture_checkpoint

README = Path(__file__).resolve().parents[2] / "README.md"


def three_line_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return next(code for code in blocks if "predict_image(" in code and "from_mmseg(" in code)


def test_three_line_example_runs_on_a_fixture_checkpoint(tmp_path, monkeypatch):
    code = three_line_example()
    assert len([line for line in code.splitlines() if line.strip()]) == 3
    file_name = re.search(r'from_mmseg\("([^"]+\.pth)"\)', code)[1]
    image_name = re.search(r'predict_image\("([^"]+)"\)', code)[1]
    monkeypatch.chdir(tmp_path)
    torch.save(fixture_checkpoint(), file_name)
    # a wide strip: Cityscapes' test resize (fit into 2048 x 1024) only enlarges it 1.28x
    pixels = np.random.default_rng(0).integers(0, 256, (16, 1600, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image_name)
    namespace: dict = {}
    exec(compile(code, "README.md three-line example", "exec"), namespace)
    labels = namespace["labels"]
    assert labels.shape == (16, 1600) and labels.dtype == torch.int64
    model = namespace["model"]
    assert model.backbone_name == "resnet50c" and model.pretrained_config.class_names[0] == "road"
    assert torch.equal(labels, model.predict_image(pixels))  # the file read as the array is

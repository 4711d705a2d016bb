"""Write attnblocks/pretrained/mmseg_releases.json from mmsegmentation's own metafiles.

usage: python make_release_table.py MMSEG_CONFIGS_DIR > attnblocks/pretrained/mmseg_releases.json

MMSEG_CONFIGS_DIR: the ``configs`` folder of mmsegmentation 1.2.2 (in its wheel:
``mmseg/.mim/configs``; ``pip download --no-deps mmsegmentation==1.2.2`` and unzip it).
Needs PyYAML. Facts only: the config name (from the ``Config`` path, unique where the
metafile's ``Name`` is not: OCRNet's 160k ADE20K rows repeat the 80k names), dataset,
crop and iterations (from the config name), backbone, mIoU, download path and hash. The
test setting (sliding window, ``align_corners``, test resize) is read from the config
files themselves: a config that overrides ``test_cfg`` or ``align_corners`` is checked
against the 769x769 rule below, so a new kind of override fails here instead of being
written down wrongly.
"""

import json
import re
import sys
from pathlib import Path

import yaml

FAMILIES = {  # mmseg config folder -> this package's model name
    "danet": "danet",
    "ccnet": "ccnet",
    "nonlocal_net": "nlnet",
    "gcnet": "gcnet",
    "dnlnet": "dnlnet",
    "psanet": "psanet",
    "ann": "annnet",
    "isanet": "isanet",
    "ocrnet": "ocrnet",
    "emanet": "emanet",
}
DATASETS = {"cityscapes": "cityscapes", "ade20k": "ade20k", "voc12aug": "voc"}
TEST_SCALES = {"cityscapes": [2048, 1024], "ade20k": [2048, 512], "voc": [2048, 512]}
ROOT = "https://download.openmmlab.com/mmsegmentation/v0.5/"
NAME = re.compile(
    r"^(?P<model>[a-z]+)_(?P<backbone>[a-z0-9-]+)_(?P<gpus>\d+)xb(?P<batch>\d+)-"
    r"(?P<iters>\d+)k_(?P<dataset>[a-z0-9]+)-(?P<h>\d+)x(?P<w>\d+)$"
)
# metafile typos: the config file on disk is the truth
TYPOS = {
    "eemanet_r50-d8_4xb2-80k_cityscapes-512x1024": "emanet_r50-d8_4xb2-80k_cityscapes-512x1024"
}
SLIDE_769 = "test_cfg=dict(mode='slide', crop_size=(769, 769), stride=(513, 513))"


def config_text(path: Path) -> str:
    """A config file's text followed by that of the configs it inherits from in its folder."""
    text = path.read_text()
    local = re.findall(r"_base_ = '\./([^']+)'", text)
    return text + "".join(config_text(path.parent / name) for name in local)


def row(configs: Path, family: str, model: dict) -> dict:
    config = Path(model["Config"]).stem
    config = TYPOS.get(config, config)
    parts = NAME.match(config)
    assert parts, config
    run_iters = re.search(r"[_-](\d+)k_", model["Weights"].rsplit("/", 2)[1]).group(1)
    if run_iters != parts["iters"]:  # OCRNet's 160k ADE20K rows name the 80k configs
        config = config.replace(f"-{parts['iters']}k_", f"-{run_iters}k_")
        assert (configs / family / f"{config}.py").is_file(), config
        parts = NAME.match(config)
    results = model["Results"]
    metrics = results["Metrics"] if isinstance(results, dict) else results[0]["Metrics"]
    weights = model["Weights"]
    assert weights.startswith(ROOT), weights
    prefix = re.search(r"-([0-9a-f]{8,})\.pth$", weights)
    assert prefix, weights
    dataset = DATASETS[parts["dataset"]]
    crop = [int(parts["h"]), int(parts["w"])]
    text = config_text(configs / family / f"{config}.py")
    slide = "mode='slide'" in text
    if slide or "align_corners=True" in text:  # only the Cityscapes 769x769 rule is known
        assert crop == [769, 769] and SLIDE_769 in text.replace("\n", " ").replace("  ", ""), config
        assert "decode_head=dict(align_corners=True)" in text, config
    if crop == [769, 769]:
        assert slide and "cityscapes_769x769.py" in text, config
    return {
        "config": config,
        "model": FAMILIES[family],
        "dataset": dataset,
        "backbone": model["Metadata"]["Architecture"][0],
        "crop": crop,
        "iterations": int(parts["iters"]) * 1000,
        "miou": metrics["mIoU"],
        "miou_ms_flip": metrics.get("mIoU(ms+flip)"),
        "weights": weights[len(ROOT) :],
        "test_scale": [2049, 1025] if crop == [769, 769] else TEST_SCALES[dataset],
        "test_crop": [769, 769] if slide else None,
        "test_stride": [513, 513] if slide else None,
        "align_corners": slide,
    }


def main() -> None:
    configs = Path(sys.argv[1])
    rows = []
    for family in FAMILIES:
        metafile = yaml.safe_load((configs / family / "metafile.yaml").read_text())
        rows += [row(configs, family, model) for model in metafile["Models"]]
    names = [r["config"] for r in rows]
    assert len(set(names)) == len(names), "config names repeat"
    lines = ",\n".join(json.dumps(r) for r in rows)  # one release a line: diffs stay readable
    print(f"[\n{lines}\n]")


if __name__ == "__main__":
    main()

"""examples/evaluate.py: metrics, progress, label-id and colour PNGs, one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image

from attnblocks.pretrained import CITYSCAPES_PALETTE
from examples import evaluate
from tests.examples.runs import SMALL_REAL, fake_cityscapes
from tests.examples.runs import run_train as run_synthetic

# the official Cityscapes trainId -> labelId of the 19 evaluated classes, written out here
CITYSCAPES_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def test_evaluate_a_saved_checkpoint(trained, tmp_path, capsys):
    preds = tmp_path / "preds"
    summary = evaluate.main([
        "--checkpoint", str(trained / "checkpoint.pt"), "--limit", "3", "--crop-size", "48",
        "--flip", "--scales", "0.75", "1.0", "--save-predictions", str(preds),
        "--json", str(tmp_path / "metrics.json"), "--device", "cpu",
    ])  # fmt: skip
    printed = capsys.readouterr()
    assert "mIoU" in printed.out and "truck" in printed.out
    assert "3/3" in printed.err  # the progress bar went to stderr while scoring
    assert json.loads((tmp_path / "metrics.json").read_text())["miou"] == summary["miou"]
    names = ["00000.png", "00001.png", "00002.png"]
    assert sorted(p.name for p in (preds / "labels").iterdir()) == names
    assert sorted(p.name for p in (preds / "colour").iterdir()) == names
    assert (preds / "legend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cityscapes_predictions_are_label_id_pngs_and_palette_pngs(tmp_path):
    root = fake_cityscapes(tmp_path / "cityscapes")
    run_dir, preds = tmp_path / "run", tmp_path / "preds"
    from examples import train

    train.train(train.parse_args(["--dataset", "cityscapes", "--data-root", str(root),
                                  "--iters", "1", *SMALL_REAL, "--no-pictures",
                                  "--out", str(run_dir)]))  # fmt: skip
    evaluate.main(["--checkpoint", str(run_dir / "checkpoint.pt"), "--crop-size", "32",
                   "--save-predictions", str(preds), "--device", "cpu"])  # fmt: skip
    names = sorted(p.name for p in (preds / "labels").iterdir())
    assert names == ["aachen_000000_000000_leftImg8bit.png", "bremen_000000_000001_leftImg8bit.png"]
    for name in names:
        label_ids = Image.open(preds / "labels" / name)
        colour = Image.open(preds / "colour" / name)
        assert label_ids.mode == "L" and colour.mode == "P"
        train_ids = np.asarray(colour)
        assert train_ids.max() < 19
        # the label file holds the label id of each pixel's predicted train id
        np.testing.assert_array_equal(np.asarray(label_ids),
                                      np.asarray(CITYSCAPES_LABEL_IDS)[train_ids])  # fmt: skip
        # coloured with Cityscapes' official colours, as the pictures of train.py and segment.py
        palette = np.asarray(colour.getpalette()[: 19 * 3]).reshape(19, 3)
        np.testing.assert_array_equal(palette, np.asarray(CITYSCAPES_PALETTE))
        image = Image.open(root / "leftImg8bit" / "val" / name.split("_")[0] / name)
        assert label_ids.size == image.size


def test_a_truncated_checkpoint_is_a_one_line_error_naming_it(tmp_path):
    run_synthetic(tmp_path, "--no-pictures", "--stop-at", "1")
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:500])
    with pytest.raises(SystemExit, match=rf"cannot read the checkpoint {checkpoint}"):
        evaluate.main(["--checkpoint", str(checkpoint), "--device", "cpu"])
    with pytest.raises(SystemExit, match="no checkpoint at"):
        evaluate.main(["--checkpoint", str(tmp_path / "missing.pt"), "--device", "cpu"])


def test_help_shows_each_default_once(capsys):
    from tests.examples.test_train import assert_each_default_shown_once

    with pytest.raises(SystemExit):
        evaluate.parse_args(["--help"])
    assert_each_default_shown_once(capsys.readouterr().out)

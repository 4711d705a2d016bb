"""train, evaluate and visualise on fake dataset trees whose images differ in size."""

import json

import pytest

from examples import evaluate, train, visualize_attention
from tests.examples.runs import SMALL_REAL, VAL_SIZES, fake_ade20k


@pytest.fixture(scope="module")
def ade20k(tmp_path_factory):
    return fake_ade20k(tmp_path_factory.mktemp("ade20k"))


def test_train_evaluate_and_visualise_ade20k_with_images_of_different_sizes(ade20k, tmp_path):
    out = tmp_path / "run"
    # three validation images of three sizes: fewer than the four the pictures show
    status = train.main(["--dataset", "ade20k", "--data-root", str(ade20k), "--iters", "2",
                         *SMALL_REAL, "--out", str(out)])  # fmt: skip
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "ade20k" and len(metrics["per_class_iou"]) == 150
    for picture in ("predictions.png", "attention.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    summary = evaluate.main(["--checkpoint", str(out / "checkpoint.pt"), "--crop-size", "32",
                             "--scales", "0.75", "--device", "cpu",
                             "--save-predictions", str(tmp_path / "preds")])  # fmt: skip
    assert 0 <= summary["miou"] <= 1
    assert len(list((tmp_path / "preds" / "labels").iterdir())) == len(VAL_SIZES)

    image = ade20k / "ADEChallengeData2016" / "images" / "validation" / "ADE_valid_00000001.jpg"
    visualize_attention.main(["--checkpoint", str(out / "checkpoint.pt"), "--image", str(image),
                              "--points", "5,5", "37,29"])  # fmt: skip
    assert (out / "attention-ADE_valid_00000001.png").is_file()


def test_too_few_images_for_one_batch_name_the_batch_size(ade20k, tmp_path, capsys):
    status = train.main(["--dataset", "ade20k", "--data-root", str(ade20k), "--iters", "2",
                         *SMALL_REAL, "--batch-size", "8", "--out", str(tmp_path)])  # fmt: skip
    assert status == 2
    assert "4 training images make less than one batch of --batch-size 8" in capsys.readouterr().err

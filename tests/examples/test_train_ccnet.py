"""examples/train.py --model ccnet: a CCNet run, and its checkpoint in the other examples."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from attnblocks.models import CCNet
from examples import evaluate, segment, train, visualize_attention
from examples.checkpoints import load_model
from tests.examples.runs import load, run_train


@pytest.fixture(scope="module")
def ccnet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ccnet")
    metrics = run_train(out, "--model", "ccnet")
    return out, metrics


def test_ccnet_trains_and_its_checkpoint_rebuilds_it(ccnet_run):
    out, metrics = ccnet_run
    assert metrics["model"] == "ccnet" and metrics["iters"] == 4
    assert set(metrics["gammas"]) == {"cca"} and metrics["gammas"]["cca"] != 0.0  # it learned
    assert json.loads((out / "metrics.json").read_text())["miou"] == metrics["miou"]
    checkpoint = load(out / "checkpoint.pt")
    assert checkpoint["model_name"] == "ccnet" and checkpoint["model_config"]["recurrence"] == 2
    model, _ = load_model(out / "checkpoint.pt", torch.device("cpu"))
    assert isinstance(model, CCNet)
    assert model.head.attention.gamma.item() == metrics["gammas"]["cca"]
    assert "cca_gamma" in (out / "train.log").read_text()
    assert (out / "predictions.png").is_file() and not (out / "attention.png").exists()


def test_evaluate_scores_the_ccnet_checkpoint(ccnet_run, tmp_path):
    out, metrics = ccnet_run
    # train.py scored the first 4 validation scenes whole; evaluate.py the same 4, the same way.
    summary = evaluate.main(["--checkpoint", str(out / "checkpoint.pt"), "--limit", "4",
                             "--device", "cpu"])  # fmt: skip
    assert summary["miou"] == pytest.approx(metrics["miou"], abs=1e-6)


def test_segment_takes_the_model_from_the_checkpoint(ccnet_run, tmp_path):
    out, _ = ccnet_run
    image = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "scene.png")
    result = segment.main([str(tmp_path / "scene.png"), "--checkpoint", str(out / "checkpoint.pt"),
                           "--whole", "--out", str(tmp_path)])  # fmt: skip
    model, _ = load_model(out / "checkpoint.pt", torch.device("cpu"))
    assert torch.equal(result["labels_map"], model.predict_image(image, crop_size=None,
                                                                  stride=None))  # fmt: skip


def test_visualize_attention_refuses_a_ccnet_checkpoint(ccnet_run, capsys):
    out, _ = ccnet_run
    with pytest.raises(SystemExit):
        visualize_attention.main(["--checkpoint", str(out / "checkpoint.pt")])
    assert "holds a CCNet" in capsys.readouterr().err


def test_resuming_a_ccnet_run_as_danet_is_refused(ccnet_run, tmp_path):
    out, _ = ccnet_run
    with pytest.raises(train.RunError, match="holds a ccnet run; resume it with --model ccnet"):
        run_train(out, "--resume", "--iters", "6")


def test_no_attention_keeps_the_criss_cross_gamma_at_zero(tmp_path):
    metrics = run_train(tmp_path, "--model", "ccnet", "--no-attention", "--no-pictures",
                        "--iters", "2")  # fmt: skip
    assert metrics["gammas"] == {"cca": 0.0}


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--model", "ccnet", "--aux-weights", "1", "0.5"], "--aux-weights"),
        (["--model", "ccnet", "--attention-backend", "bmm"], "--attention-backend"),
        (["--recurrence", "1"], "--recurrence"),  # DANet has no recurrence
    ],
)
def test_flags_of_the_other_model_are_refused(flags, named, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(flags)
    assert f"{named} do(es) not apply" in capsys.readouterr().err


def test_defaults_per_model():
    danet, ccnet = train.parse_args([]), train.parse_args(["--model", "ccnet"])
    assert danet.aux_weights == (1.0, 1.0) and danet.recurrence is None
    assert str(danet.out) == "runs/danet" and str(ccnet.out) == "runs/ccnet"
    assert ccnet.recurrence == 2 and ccnet.aux_weights is None

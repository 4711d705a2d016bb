"""The examples take every model attnblocks registers, with no edit of their own.

A toy model joins ``attnblocks.models.MMSEG_MODELS`` for these tests only (as the zoo's
models join it by defining ``mmseg_model``), with a constructor argument of its own and
an attention ``gamma``: train.py trains it with ``--model-arg``, its checkpoint goes
through evaluate.py and segment.py, and flags it has no use for are refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from attnblocks.models import MMSEG_MODELS, SegmentationModel
from examples import evaluate, segment, train
from examples.checkpoints import MODELS, attention_gammas, load_model
from tests.examples.runs import load, run_train


class _GatedHead(nn.Module):
    """1x1 conv to ``width`` channels, ``x + gamma * relu(x)`` (gamma optional), classifier."""

    def __init__(self, channels: int, num_classes: int, width: int, gate: bool) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, width, 1)
        self.gate = nn.Module()
        self.gate.gamma = nn.Parameter(torch.zeros(1)) if gate else None
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        if self.gate.gamma is not None:
            x = x + self.gate.gamma * torch.relu(x)
        return self.classifier(x)


class ToyNet(SegmentationModel):
    """A registered model the examples have never heard of."""

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 2,
        output_stride: int = 8,
        multi_grid=None,
        pretrained_backbone: bool = False,
        backbone_weights=None,
        backbone_kwargs=None,
        pretrained_config=None,
        width: int = 8,
        gate: bool = True,
    ) -> None:
        super().__init__(
            backbone, num_classes, output_stride, multi_grid, pretrained_backbone,
            backbone_weights, backbone_kwargs=backbone_kwargs,
            pretrained_config=pretrained_config,
        )  # fmt: skip
        self.head = _GatedHead(self.encoder_channels, num_classes, width, gate)


@pytest.fixture(scope="module")
def toynet():
    """``toynet`` in the registry while this module runs (MODELS is the same dict)."""
    assert MODELS is MMSEG_MODELS
    MMSEG_MODELS["toynet"] = ToyNet
    yield ToyNet
    del MMSEG_MODELS["toynet"]


@pytest.fixture(scope="module")
def toy_run(toynet, tmp_path_factory):
    out = tmp_path_factory.mktemp("toynet")
    metrics = run_train(out, "--model", "toynet", "--model-arg", "width=12")
    return out, metrics


def test_train_builds_trains_and_checkpoints_a_registered_model(toy_run):
    out, metrics = toy_run
    assert metrics["model"] == "toynet" and metrics["iters"] == 4
    assert set(metrics["gammas"]) == {"gate"} and metrics["gammas"]["gate"] != 0.0  # it learned
    checkpoint = load(out / "checkpoint.pt")
    assert checkpoint["model_name"] == "toynet" and checkpoint["model_config"]["width"] == 12
    model, _ = load_model(out / "checkpoint.pt", torch.device("cpu"))
    assert isinstance(model, ToyNet) and model.head.reduce.out_channels == 12
    assert (out / "predictions.png").is_file() and not (out / "attention.png").exists()


def test_evaluate_and_segment_take_its_checkpoint(toy_run, tmp_path):
    out, metrics = toy_run
    summary = evaluate.main(["--checkpoint", str(out / "checkpoint.pt"), "--limit", "4",
                             "--device", "cpu"])  # fmt: skip
    assert summary["miou"] == pytest.approx(metrics["miou"], abs=1e-6)
    image = np.random.default_rng(2).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "scene.png")
    result = segment.main([str(tmp_path / "scene.png"), "--checkpoint", str(out / "checkpoint.pt"),
                           "--whole", "--out", str(tmp_path)])  # fmt: skip
    model, _ = load_model(out / "checkpoint.pt", torch.device("cpu"))
    expected = model.predict_image(image, crop_size=None, stride=None)
    assert torch.equal(result["labels_map"], expected)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--recurrence", "2"], "--recurrence do(es) not apply to --model toynet"),
        (["--attention-backend", "bmm"], "--attention-backend do(es) not apply"),
        (["--aux-weights", "1", "1"], "--aux-weights do(es) not apply"),
        (["--model-arg", "depth=3"], "ToyNet takes no argument 'depth'; it takes gate, width"),
    ],
)
def test_flags_it_has_no_use_for_are_refused(toynet, flags, named, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--model", "toynet", *flags])
    assert named in capsys.readouterr().err


def test_no_attention_needs_a_gamma(toynet, tmp_path):
    with pytest.raises(train.RunError, match=r"--no-attention .* ToyNet has none"):
        run_train(tmp_path, "--model", "toynet", "--model-arg", "gate=False", "--no-attention")
    assert attention_gammas(ToyNet(gate=False)) == {}


@pytest.mark.parametrize("name", sorted(MMSEG_MODELS))
def test_every_zoo_model_builds_from_the_demo_defaults(name):
    # OCRNet read one level here until its class declared its two (layer3, layer4)
    args = train.parse_args(["--model", name])
    model = train.build_model(args, num_classes=5).eval()
    with torch.no_grad():
        labels = model.predict(torch.randn(1, 3, 64, 64))
    assert labels.shape == (1, 64, 64) and int(labels.max()) < 5

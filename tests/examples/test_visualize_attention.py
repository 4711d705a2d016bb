"""examples/visualize_attention.py: the CLI, its query points and where it writes."""

import pytest
import torch

from examples import visualize_attention
from examples.checkpoints import load_model


def test_visualize_attention_cli(trained, tmp_path):
    out = tmp_path / "attention.png"
    visualize_attention.main(["--checkpoint", str(trained / "checkpoint.pt"), "--points", "10,10",
                              "40,50", "--out", str(out)])  # fmt: skip
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_points_outside_the_image_are_an_error_not_clamped(trained, tmp_path, capsys):
    out = tmp_path / "attention.png"
    with pytest.raises(SystemExit):
        visualize_attention.main(["--checkpoint", str(trained / "checkpoint.pt"), "--points",
                                  "10,10", "200,50", "--out", str(out)])  # fmt: skip
    error = capsys.readouterr().err
    assert "--points" in error and "[(200, 50)]" in error and "rows must be 0..127" in error
    assert not out.exists()
    model, _ = load_model(trained / "checkpoint.pt", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"\[\(5, -1\)\] lie outside the 64 x 80 image"):
        visualize_attention.draw_attention(model, torch.zeros(3, 64, 80), out, [(5, -1)])


def test_the_picture_goes_into_the_run_folder_by_default(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as if run from a source checkout
    visualize_attention.main(["--checkpoint", str(trained / "checkpoint.pt"),
                              "--synthetic-index", "2"])  # fmt: skip
    assert (trained / "attention-synthetic-2.png").is_file()
    assert list(tmp_path.iterdir()) == []


def test_help_shows_each_default_once(capsys):
    from tests.examples.test_train import assert_each_default_shown_once

    with pytest.raises(SystemExit):
        visualize_attention.main(["--help"])
    assert_each_default_shown_once(capsys.readouterr().out)


def test_every_attention_map_has_a_colour_bar(trained, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved = []
    savefig = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda fig, *a, **k: saved.append(fig) or savefig(fig, *a, **k)
    )
    visualize_attention.main(["--checkpoint", str(trained / "checkpoint.pt"), "--points", "10,10",
                              "40,50", "--out", str(tmp_path / "attention.png")])  # fmt: skip
    (figure,) = saved
    bars = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    labels = sorted(bar.get_ylabel() for bar in bars)
    assert labels == ["activation"] * 2 + ["attention weight"] * 2  # 2 PAM points, 2 CAM channels

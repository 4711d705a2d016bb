"""examples/train.py, evaluate.py and visualize_attention.py end to end, at tiny sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from examples import evaluate, train, visualize_attention

REPO = Path(__file__).resolve().parents[2]
TINY = ["--iters", "4", "--batch-size", "2", "--val-limit", "4", "--log-every", "1"]


def run_train(out: Path, *extra: str) -> dict | None:
    return train.train(train.parse_args([*TINY, "--out", str(out), *extra]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    run_train(out, "--checkpoint-every", "2")
    return out


def test_training_writes_checkpoint_metrics_log_and_pictures(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert {"miou", "pixel_acc", "per_class_iou", "iters", "seconds"} <= metrics.keys()
    assert metrics["iters"] == 4 and metrics["seconds"] > 0 and 0 <= metrics["miou"] <= 1
    assert set(metrics["per_class_iou"]) == set(train.SyntheticScenes.classes)
    checkpoint = torch.load(trained / "checkpoint.pt", weights_only=False)
    assert checkpoint["iteration"] == 4
    assert not (trained / "checkpoint.pt.tmp").exists()  # renamed into place
    assert "iter 4 loss" in (trained / "train.log").read_text()
    for picture in ("predictions.png", "attention.png"):
        assert (trained / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_train(whole, "--no-pictures")
    assert run_train(split, "--no-pictures", "--stop-at", "2") is None  # "killed" after iter 2
    assert torch.load(split / "checkpoint.pt", weights_only=False)["iteration"] == 2
    resumed = run_train(split, "--no-pictures", "--resume")
    expected = json.loads((whole / "metrics.json").read_text())
    assert resumed["miou"] == expected["miou"]
    final = [torch.load(out / "checkpoint.pt", weights_only=False) for out in (whole, split)]
    assert final[0]["iteration"] == final[1]["iteration"] == 4
    for name, value in final[0]["model"].items():
        assert torch.equal(value, final[1]["model"][name]), name
    momentum = [c["optimizer"]["state"] for c in final]
    assert all(torch.equal(momentum[0][k]["momentum_buffer"], momentum[1][k]["momentum_buffer"])
               for k in momentum[0])  # fmt: skip


def test_no_attention_keeps_gammas_at_zero(tmp_path):
    metrics = run_train(tmp_path, "--no-pictures", "--no-attention")
    assert metrics["attention"] is False
    assert metrics["gammas"] == {"pam": 0.0, "cam": 0.0}


def test_resume_without_checkpoint_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*checkpoint\.pt"):
        run_train(tmp_path, "--resume")


def test_help_documents_every_flag():
    result = subprocess.run([sys.executable, str(REPO / "examples" / "train.py"), "--help"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    for flag in ("--dataset", "--data-root", "--backbone", "--output-stride", "--multi-grid",
                 "--crop-size", "--batch-size", "--iters", "--epochs", "--lr", "--head-lr-mult",
                 "--weight-decay", "--amp", "--channels-last", "--attention-backend", "--device",
                 "--workers", "--out", "--resume", "--no-attention"):  # fmt: skip
        assert flag in result.stdout, flag


def test_two_process_torchrun_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(REPO / "examples" / "train.py"), *TINY, "--no-pictures",
               "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["iters"] == 4


def test_evaluate_a_saved_checkpoint(trained, tmp_path, capsys):
    summary = evaluate.main([
        "--checkpoint", str(trained / "checkpoint.pt"), "--limit", "3", "--crop-size", "48",
        "--flip", "--scales", "0.75", "1.0", "--save-predictions", str(tmp_path / "preds"),
        "--json", str(tmp_path / "metrics.json"), "--device", "cpu",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "truck" in printed
    assert json.loads((tmp_path / "metrics.json").read_text())["miou"] == summary["miou"]
    assert sorted(p.name for p in (tmp_path / "preds").iterdir()) == [
        "00000.png",
        "00001.png",
        "00002.png",
    ]


def test_visualize_attention_cli(trained, tmp_path):
    out = tmp_path / "attention.png"
    visualize_attention.main(["--checkpoint", str(trained / "checkpoint.pt"), "--points", "10,10",
                              "40,50", "--out", str(out)])  # fmt: skip
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_iters_replace_the_default_epochs_of_real_datasets():
    args = train.parse_args(["--dataset", "cityscapes", "--data-root", "data", "--iters", "10"])
    assert args.iters == 10 and args.epochs is None
    args = train.parse_args(["--dataset", "cityscapes", "--data-root", "data"])
    assert args.epochs == 240 and args.iters is None
    args = train.parse_args(["--epochs", "3"])  # synthetic
    assert args.epochs == 3 and args.iters is None
    with pytest.raises(SystemExit):
        train.parse_args(["--iters", "5", "--epochs", "3"])

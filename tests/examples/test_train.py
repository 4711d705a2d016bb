"""examples/train.py end to end, at tiny sizes: outputs, resume, signals, run folders, DDP."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from attnblocks.metrics import SegmentationMetrics
from attnblocks.pretrained import bit_palette
from examples import train
from examples.datasets import dataset_palette
from tests.examples.runs import (
    TINY,
    assert_same_run,
    load,
    run_train,
    signal_when_logged,
)

REPO = Path(__file__).resolve().parents[2]


def test_training_writes_checkpoint_metrics_log_and_pictures(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert {"miou", "pixel_acc", "per_class_iou", "iters", "seconds"} <= metrics.keys()
    assert metrics["iters"] == 4 and metrics["seconds"] > 0 and 0 <= metrics["miou"] <= 1
    assert set(metrics["per_class_iou"]) == set(train.SyntheticScenes.classes)
    checkpoint = load(trained / "checkpoint.pt")
    assert checkpoint["iteration"] == 4
    assert not list(trained.glob("*.tmp"))  # renamed into place
    assert "iter 4 loss" in (trained / "train.log").read_text()
    for picture in ("predictions.png", "attention.png"):
        assert (trained / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_logged_learning_rate_is_the_one_the_step_used(trained):
    log = (trained / "train.log").read_text()
    # poly schedule, base 0.01 (synthetic default), 4 iterations: (1 - i / 4) ** 0.9 at i = 0, 1
    assert re.search(r"iter 1 loss \S+ lr 1\.00e-02 ", log)
    assert re.search(rf"iter 2 loss \S+ lr {0.01 * 0.75**0.9:.2e} ", log)


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, trained):
    split = tmp_path / "split"
    assert run_train(split, "--no-pictures", "--stop-at", "2") is None  # "killed" after iter 2
    assert load(split / "checkpoint.pt")["iteration"] == 2
    resumed = run_train(split, "--no-pictures", "--resume")
    expected = json.loads((trained / "metrics.json").read_text())
    assert resumed["miou"] == expected["miou"]
    assert_same_run(trained, split)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_its_iteration_and_resume_ends_as_uninterrupted(
    tmp_path, trained, signum
):
    args = [*TINY, "--no-pictures", "--out", str(tmp_path)]
    with signal_when_logged("iter 2 ", signum) as sender:
        status = train.main(args)
    assert sender.sent and status == 128 + signum  # 143 for SIGTERM, 130 for SIGINT
    assert load(tmp_path / "checkpoint.pt")["iteration"] == 2
    name = signal.Signals(signum).name
    assert f"{name} at iteration 2: checkpoint written to" in (tmp_path / "train.log").read_text()
    assert train.main([*args, "--resume"]) == 0
    assert_same_run(trained, tmp_path)


def test_sigterm_from_outside_stops_cleanly_with_a_checkpoint(tmp_path):
    command = [sys.executable, str(REPO / "examples" / "train.py"), *TINY, "--iters", "40",
               "--no-pictures", "--out", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    log_file, deadline = tmp_path / "train.log", time.monotonic() + 120
    while not (log_file.exists() and "iter 2 " in log_file.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr.decode()[-2000:]
    assert b"Traceback" not in stderr and b"Traceback" not in stdout
    stopped = re.search(r"SIGTERM at iteration (\d+): checkpoint written", log_file.read_text())
    assert stopped, log_file.read_text()
    assert 2 <= load(tmp_path / "checkpoint.pt")["iteration"] == int(stopped[1]) < 40


def test_an_existing_run_is_never_overwritten_unless_asked(trained, tmp_path, capsys):
    before = {path.name: path.read_bytes() for path in trained.iterdir()}
    with pytest.raises(train.RunError, match=r"already holds a run.*--resume.*--overwrite"):
        run_train(trained)
    assert train.main([*TINY, "--out", str(trained)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in trained.iterdir()} == before

    copy = shutil.copytree(trained, tmp_path / "copy")
    run_train(copy, "--overwrite", "--iters", "2", "--no-pictures")
    assert load(copy / "checkpoint.pt")["iteration"] == 2
    assert sorted(path.name for path in copy.glob("checkpoint-*.pt")) == ["checkpoint-0000002.pt"]
    log = (copy / "train.log").read_text()
    assert "iter 2 loss" in log and "iter 4 loss" not in log  # the old run's log is gone
    assert not (copy / "predictions.png").exists()
    with pytest.raises(SystemExit):
        train.parse_args(["--resume", "--overwrite"])


def test_the_last_checkpoints_are_kept_and_a_truncated_one_falls_back(tmp_path, trained):
    run_train(tmp_path, "--no-pictures", "--checkpoint-every", "1", "--keep-checkpoints", "2",
              "--stop-at", "3")  # fmt: skip
    numbered = sorted(path.name for path in tmp_path.glob("checkpoint-*.pt"))
    assert numbered == ["checkpoint-0000002.pt", "checkpoint-0000003.pt"]
    latest = tmp_path / "checkpoint.pt"
    assert latest.read_bytes() == (tmp_path / "checkpoint-0000003.pt").read_bytes()
    latest.write_bytes(latest.read_bytes()[:1000])  # a full disk, say: iteration 3 is lost
    run_train(tmp_path, "--no-pictures", "--resume")
    log = (tmp_path / "train.log").read_text()
    assert re.search(
        r"cannot read the checkpoint \S+checkpoint\.pt \(truncated or corrupt\?\)", log
    )
    assert re.search(r"resumed from \S+checkpoint-0000002\.pt at iteration 2", log)
    assert_same_run(trained, tmp_path)


def test_a_truncated_only_checkpoint_is_a_one_line_error_naming_it(tmp_path, capsys):
    run_train(tmp_path, "--no-pictures", "--stop-at", "1", "--keep-checkpoints", "1")
    latest = tmp_path / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    capsys.readouterr()  # the first run's progress bar
    assert train.main([*TINY, "--out", str(tmp_path), "--resume"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "Traceback" not in error
    assert re.fullmatch(rf"train\.py: error: cannot read the checkpoint {re.escape(str(latest))} "
                        r"\(truncated or corrupt\?\): .+", error)  # fmt: skip


def test_no_attention_keeps_gammas_at_zero(tmp_path):
    metrics = run_train(tmp_path, "--no-pictures", "--no-attention")
    assert metrics["attention"] is False
    assert metrics["gammas"] == {"pam": 0.0, "cam": 0.0}


def test_resume_without_checkpoint_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*checkpoint\.pt"):
        run_train(tmp_path, "--resume")


def test_context_miou_leaves_out_classes_absent_from_labels_and_predictions(tmp_path, monkeypatch):
    # A few validation scenes may hold cars only, and the model may never say "truck".
    def evaluate_without_trucks(model, dataset, args, num_classes, *rest):
        metrics = SegmentationMetrics(num_classes)
        labels = torch.tensor([[[0, 4], [4, 1]]])  # background, car, road
        metrics.update(labels, labels)
        return metrics

    monkeypatch.setattr(train, "evaluate", evaluate_without_trucks)
    result = run_train(tmp_path, "--no-pictures", "--iters", "1")
    assert result["per_class_iou"]["truck"] is None
    assert result["context_miou"] == result["per_class_iou"]["car"] == 1.0
    assert json.loads((tmp_path / "metrics.json").read_text())["context_miou"] == 1.0


def test_log_lines_are_written_above_the_progress_bar(tmp_path, monkeypatch):
    from tqdm import std

    written = []
    monkeypatch.setattr(std.tqdm, "write", classmethod(lambda cls, s, **kw: written.append(s)))
    run_train(tmp_path, "--no-pictures", "--iters", "2")
    assert any("iter 2 loss" in line for line in written)  # through tqdm.write, not over the bar


def test_help_documents_every_flag_and_each_default_once():
    result = subprocess.run([sys.executable, str(REPO / "examples" / "train.py"), "--help"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    for flag in ("--dataset", "--data-root", "--backbone", "--output-stride", "--multi-grid",
                 "--crop-size", "--batch-size", "--iters", "--epochs", "--lr", "--head-lr-mult",
                 "--weight-decay", "--amp", "--channels-last", "--attention-backend", "--device",
                 "--workers", "--out", "--resume", "--overwrite", "--keep-checkpoints",
                 "--no-attention"):  # fmt: skip
        assert flag in result.stdout, flag
    assert_each_default_shown_once(result.stdout)


def assert_each_default_shown_once(help_text: str) -> None:
    """No option's help names its default twice, and none shows "(default: None)"."""
    # argparse heads the section "options:" (Python 3.10+) or "optional arguments:" (3.9).
    options = re.split(r"\n  (?=-)", re.split(r"\n(?:optional arguments|options):", help_text)[1])
    for option in options:
        text = " ".join(option.split())
        assert text.count("default") <= 1, text
        assert "(default: None)" not in text and "(default: False)" not in text, text


def test_data_workers_default_to_the_cpus_of_each_process(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    real = ["--dataset", "ade20k", "--data-root", "data"]
    assert train.parse_args(real).workers == 2  # not 4 on 2 cores: the DataLoader would warn
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes on this machine
    assert train.parse_args(real).workers == 1
    assert train.parse_args([]).workers == 0  # synthetic scenes are generated in-process
    assert train.parse_args([*real, "--workers", "3"]).workers == 3


def test_two_process_torchrun_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(REPO / "examples" / "train.py"), *TINY, "--no-pictures",
               "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["iters"] == 4
    # Each process draws its own dropout masks: their random streams differ.
    states = load(tmp_path / "checkpoint.pt")["rng"]
    assert not torch.equal(states[0]["torch"], states[1]["torch"])
    # Both processes scored the checkpoint's model (process 0's BatchNorm statistics).
    from examples import evaluate

    rescored = evaluate.main(["--checkpoint", str(tmp_path / "checkpoint.pt"), "--limit", "4",
                              "--device", "cpu"])  # fmt: skip
    assert rescored["miou"] == pytest.approx(metrics["miou"], abs=1e-6)
    assert rescored["per_class_iou"] == pytest.approx(metrics["per_class_iou"], abs=1e-6)


def test_iters_replace_the_default_epochs_of_real_datasets():
    args = train.parse_args(["--dataset", "cityscapes", "--data-root", "data", "--iters", "10"])
    assert args.iters == 10 and args.epochs is None
    args = train.parse_args(["--dataset", "cityscapes", "--data-root", "data"])
    assert args.epochs == 240 and args.iters is None
    args = train.parse_args(["--epochs", "3"])  # synthetic
    assert args.epochs == 3 and args.iters is None
    with pytest.raises(SystemExit):
        train.parse_args(["--iters", "5", "--epochs", "3"])


@pytest.fixture(autouse=True)
def _no_leftover_log_handlers():
    """train.py removes the log handlers it installs (no file left open between tests)."""
    yield
    handlers = logging.getLogger().handlers
    assert not [h for h in handlers if getattr(h, "baseFilename", "").endswith("train.log")]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--iters", "-5"], "--iters"),
        (["--iters", "0"], "--iters"),  # the poly schedule divided by zero
        (["--epochs", "0"], "--epochs"),
        (["--lr", "-1"], "--lr"),
        (["--batch-size", "0"], "--batch-size"),
        (["--model", "ccnet", "--recurrence", "0"], "--recurrence"),
        (["--backbone", "notanet"], "--backbone"),
        (["--backbone", "resnet5O"], "did you mean resnet50"),
        (["--device", "cuda:99"], "--device"),  # no such GPU, or no GPU at all
        (["--device", "potato"], "--device"),
        (["--momentum", "1.5"], "--momentum"),
        (["--scale-range", "2", "1"], "--scale-range"),
        (["--keep-checkpoints", "0"], "--keep-checkpoints"),
        (["--model-arg", "notakey"], "--model-arg"),
        (["--model-arg", "head_dropout"], "--model-arg"),
        (["--model-arg", "dropout=0.2"], "DANet takes no argument 'dropout'; it takes"),
        (["--model-arg", "backbone=resnet50"], "backbone is set by --backbone"),
    ],
)
def test_bad_values_are_one_line_errors_before_anything_runs(tmp_path, capsys, flags, named):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as raised:
        train.main([*TINY, "--out", str(out), *flags])
    assert raised.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("train.py: error: ") and named in error, error
    assert not out.exists()  # nothing trained, no folder made


def test_a_start_that_failed_is_no_run_and_does_not_lock_its_folder(tmp_path, capsys):
    out = tmp_path / "run"
    missing = ["--dataset", "ade20k", "--data-root", str(tmp_path / "no-such-folder")]
    assert train.main([*TINY, *missing, "--out", str(out)]) == 2  # fails after logging began
    assert (out / "train.log").exists() and not list(out.glob("checkpoint*"))
    assert train.main([*TINY, "--out", str(out), "--resume"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err  # nothing to resume, said so
    assert train.main([*TINY, "--no-pictures", "--out", str(out)]) == 0  # not "already holds"
    log = (out / "train.log").read_text()
    assert "held no checkpoint: replaced train.log of a start that failed" in log
    assert "ADEChallengeData2016" not in log  # the failed start's lines are gone
    assert load(out / "checkpoint.pt")["iteration"] == 4


def test_pictures_use_the_datasets_palette(trained):
    from PIL import Image

    with Image.open(trained / "predictions.png") as picture:
        colours = {tuple(c) for c in np.asarray(picture.convert("RGB")).reshape(-1, 3)}
    palette = dataset_palette("synthetic", len(train.SyntheticScenes.classes))
    assert palette == bit_palette(7)  # attnblocks.pretrained's VOC colour map
    assert set(palette) <= colours  # the legend's patches, at least

"""Tiny training runs and fake dataset folders shared by the example tests."""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from examples import train

# four iterations of batch 2 at 128 x 128, four validation scenes: about a second
TINY = ["--iters", "4", "--batch-size", "2", "--val-limit", "4", "--log-every", "1"]
# a DANet small enough for 150 classes on a CPU: resnet18 up to its stride-8 stage, 32 px crops
SMALL_REAL = ["--backbone", "resnet18", "--backbone-stage", "2", "--crop-size", "32",
              "--eval-crop", "32", "--batch-size", "2", "--workers", "0",
              "--log-every", "1"]  # fmt: skip


def run_train(out: Path, *extra: str) -> dict | None:
    """train.train on the tiny synthetic setting, writing into ``out``."""
    return train.train(train.parse_args([*TINY, "--out", str(out), *extra]))


def load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


def assert_same_run(first: Path, second: Path) -> None:
    """The final checkpoints of two run folders hold the same model, momentum and iteration."""
    final = [load(out / "checkpoint.pt") for out in (first, second)]
    assert final[0]["iteration"] == final[1]["iteration"]
    for name, value in final[0]["model"].items():
        assert torch.equal(value, final[1]["model"][name]), name
    momentum = [c["optimizer"]["state"] for c in final]
    assert all(torch.equal(momentum[0][k]["momentum_buffer"], momentum[1][k]["momentum_buffer"])
               for k in momentum[0])  # fmt: skip


class _SignalOnMessage(logging.Handler):
    def __init__(self, prefix: str, signum: int) -> None:
        super().__init__()
        self.prefix, self.signum, self.sent = prefix, signum, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.sent and record.getMessage().startswith(self.prefix):
            self.sent = True
            signal.raise_signal(self.signum)  # a real signal to this process, at a known moment


@contextmanager
def signal_when_logged(prefix: str, signum: int):
    """Send ``signum`` to this process when train.py logs a line starting with ``prefix``."""
    handler = _SignalOnMessage(prefix, signum)
    logger = logging.getLogger("train")  # basicConfig(force=True) only resets the root logger
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def write_image(path: Path, size: tuple[int, int], rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_label(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def blocky_labels(
    size: tuple[int, int], choices: list[int], rng: np.random.Generator
) -> np.ndarray:
    """Labels drawn from ``choices`` in 8 x 8 blocks, cut to ``size``."""
    blocks = rng.choice(choices, (size[0] // 8 + 1, size[1] // 8 + 1))
    return np.kron(blocks, np.ones((8, 8), dtype=np.int64))[: size[0], : size[1]]


# training and validation images of different sizes (H, W); fewer than four for validation
TRAIN_SIZES = [(40, 56), (48, 36), (36, 44), (52, 60)]
VAL_SIZES = [(44, 52), (38, 30), (50, 46)]


def fake_ade20k(root: Path) -> Path:
    """An ADEChallengeData2016 tree: JPEGs of different sizes, annotations 0 (other) .. 150."""
    rng = np.random.default_rng(0)
    base = root / "ADEChallengeData2016"
    for folder, sizes in (("training", TRAIN_SIZES), ("validation", VAL_SIZES)):
        for index, size in enumerate(sizes):
            name = f"ADE_{folder[:5]}_{index:08d}"
            write_image(base / "images" / folder / f"{name}.jpg", size, rng)
            labels = blocky_labels(size, [0, 1, 3, 13, 21, 150], rng)
            write_label(base / "annotations" / folder / f"{name}.png", labels)
    return root


def fake_cityscapes(root: Path) -> Path:
    """A Cityscapes tree (two cities per split), PNGs of different sizes, a few label ids."""
    rng = np.random.default_rng(1)
    for split, sizes in (("train", TRAIN_SIZES[:2]), ("val", VAL_SIZES[:2])):
        for index, size in enumerate(sizes):
            city = ("aachen", "bremen")[index]
            name = f"{city}_000000_{index:06d}"
            write_image(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", size, rng)
            labels = blocky_labels(size, [0, 7, 8, 11, 21, 26, 255], rng)
            write_label(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", labels)
    return root

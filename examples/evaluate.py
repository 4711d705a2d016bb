"""Evaluate a checkpoint of examples/train.py as the paper does.

Sliding window, horizontal flip and multi-scale averaging of softmax scores
(``attnblocks.inference``), then per-class IoU, mIoU and pixel accuracy; optionally
colourised prediction PNGs.

    python examples/evaluate.py --checkpoint runs/danet/checkpoint.pt
    python examples/evaluate.py --checkpoint CKPT --dataset cityscapes --data-root DATA \\
        --crop-size 768 --scales 0.75 1.0 1.25 1.5 1.75 2.0 --flip --save-predictions preds/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `examples.*` when run as a script

from attnblocks.inference import predict_scores
from attnblocks.metrics import SegmentationMetrics
from attnblocks.models import DANet
from examples.datasets import DATASET_NAMES, build_dataset
from examples.train import synthetic_validation_set
from examples.transforms import EvalTransform


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add = parser.add_argument
    add("--checkpoint", type=Path, required=True, help="checkpoint.pt of examples/train.py")
    add("--dataset", choices=["synthetic", *DATASET_NAMES],
        help="dataset to score (default: the one the checkpoint was trained on)")  # fmt: skip
    add("--data-root", type=Path, help="dataset folder (default: the checkpoint's)")
    add("--split", default="val", help="split to score")
    add("--crop-size", type=int, help="sliding-window size (default: whole images)")
    add("--stride", type=int, help="sliding-window step (default: 2/3 of the crop)")
    add("--scales", type=float, nargs="+", default=[1.0], help="image scales to average")
    add("--flip", action="store_true", help="also average the horizontally flipped image")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--limit", type=int, help="score only the first N images")
    add("--save-predictions", type=Path, metavar="DIR", help="write colourised predictions here")
    add("--json", type=Path, help="also write the metrics to this JSON file")
    return parser.parse_args(argv)


def load(checkpoint_path: Path, device: torch.device) -> tuple[DANet, dict]:
    """The trained DANet and the checkpoint's contents."""
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint_path}")
    checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=False)
    model = DANet(**checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint


def build_eval_set(args: argparse.Namespace, trained: dict):
    dataset = args.dataset or trained["dataset"]
    if dataset == "synthetic":
        return synthetic_validation_set(int(trained.get("seed", 0)))
    root = args.data_root or trained.get("data_root")
    if root is None:
        raise SystemExit(f"--data-root is needed for {dataset}")
    return build_dataset(dataset, root, args.split, transform=EvalTransform())


def colourise(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(H, W)`` labels to an RGB picture, a fixed colour per class, black for 255."""
    rng = np.random.default_rng(0)
    colours = np.concatenate(
        [rng.integers(40, 256, (num_classes, 3)), np.zeros((256 - num_classes, 3))]
    )
    return colours[labels].astype(np.uint8)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    model, checkpoint = load(args.checkpoint, device)
    classes = tuple(checkpoint["classes"])
    dataset = build_eval_set(args, checkpoint["args"])
    if args.limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
    metrics = SegmentationMetrics(len(classes), device=device)
    if args.save_predictions:
        args.save_predictions.mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(DataLoader(dataset, batch_size=1)):
        scores = predict_scores(model, image.to(device), crop_size=args.crop_size,
                                stride=args.stride, scales=args.scales, flip=args.flip)  # fmt: skip
        prediction = scores.argmax(dim=1)
        metrics.update(prediction, label.to(device))
        if args.save_predictions:
            from PIL import Image

            picture = colourise(prediction[0].cpu().numpy(), len(classes))
            Image.fromarray(picture).save(args.save_predictions / f"{index:05d}.png")
    summary = metrics.summary(classes)
    width = max(len(name) for name in classes)
    print(f"{'class':<{width}}  IoU")
    for name, iou in summary["per_class_iou"].items():
        print(f"{name:<{width}}  {'-' if iou is None else f'{iou:.4f}'}")
    print(f"{'mIoU':<{width}}  {summary['miou']:.4f}")
    print(f"{'pixel acc':<{width}}  {summary['pixel_acc']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()

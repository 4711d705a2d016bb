"""Evaluate a checkpoint of examples/train.py as the paper does.

Sliding window, horizontal flip and multi-scale averaging of softmax scores
(``attnblocks.inference``), then per-class IoU, mIoU and pixel accuracy, with a progress
bar (running mIoU) on the way. Optionally the predictions as PNGs:

- ``DIR/labels/NAME.png``: 8-bit label files in the dataset's own values, as its
  benchmark servers take them (Cityscapes label ids, ADE20K 1..150, VOC class indices);
- ``DIR/colour/NAME.png``: palette PNGs whose pixels are the class ids, coloured with the
  dataset's palette (the one of train.py's pictures and segment.py's, from
  ``attnblocks.pretrained``), and ``DIR/legend.png`` naming the colours.

``NAME`` is the image file's name without its suffix (``00000`` ... for synthetic scenes).

    python examples/evaluate.py --checkpoint runs/danet/checkpoint.pt
    python examples/evaluate.py --checkpoint CKPT --dataset cityscapes --data-root DATA \\
        --crop-size 768 --scales 0.75 1.0 1.25 1.5 1.75 2.0 --flip --save-predictions preds/
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `examples.*` when run as a script

from attnblocks.inference import predict_scores
from attnblocks.metrics import SegmentationMetrics
from attnblocks.pretrained.datasets import Colour
from examples.checkpoints import CheckpointError, load_model
from examples.cli import HelpFormatter, device_problem, positive_float, positive_int
from examples.datasets import DATASET_NAMES, VOID_COLOUR, build_dataset, dataset_palette
from examples.train import synthetic_validation_set
from examples.transforms import EvalTransform


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="evaluate.py", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    add = parser.add_argument
    add("--checkpoint", type=Path, required=True, help="checkpoint.pt of examples/train.py")
    add("--dataset", choices=["synthetic", *DATASET_NAMES],
        help="dataset to score (default: the one the checkpoint was trained on)")  # fmt: skip
    add("--data-root", type=Path, help="dataset folder (default: the checkpoint's)")
    add("--split", default="val", help="split to score")
    add("--crop-size", type=positive_int, help="sliding-window size (default: whole images)")
    add("--stride", type=positive_int, help="sliding-window step (default: 2/3 of the crop)")
    add("--scales", type=positive_float, nargs="+", default=[1.0],
        help="image scales to average")  # fmt: skip
    add("--flip", action="store_true", help="also average the horizontally flipped image")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    add("--limit", type=positive_int, help="score only the first N images")
    add("--save-predictions", type=Path, metavar="DIR",
        help="write label-id and colour PNGs of the predictions here")  # fmt: skip
    add("--json", type=Path, help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)
    if (problem := device_problem(args.device)) is not None:
        parser.error(problem)
    return args


def fail(message: str) -> SystemExit:
    """A one-line error on stderr and exit status 1, for problems found after parsing."""
    return SystemExit(f"evaluate.py: error: {message}")


def build_eval_set(args: argparse.Namespace, trained: dict) -> Dataset:
    dataset = args.dataset or trained["dataset"]
    if dataset == "synthetic":
        return synthetic_validation_set(int(trained.get("seed", 0)))
    root = args.data_root or trained.get("data_root")
    if root is None:
        raise fail(f"--data-root is needed for {dataset}")
    return build_dataset(dataset, root, args.split, transform=EvalTransform())


def output_names(dataset: Dataset) -> list[str]:
    """A file name (no suffix) per image: the image file's own, or its index for generated ones."""
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        return [image_path.stem for image_path, _ in samples]
    return [f"{index:05d}" for index in range(len(dataset))]


class PredictionWriter:
    """Writes label-id PNGs, colour PNGs in the dataset's palette and a legend into ``folder``.

    Args:
        folder: the output folder (``labels/``, ``colour/`` and ``legend.png`` go in it).
        dataset: the scored dataset; its ``to_label_file_values`` (if any) maps class ids
            to the values of its label files (identity otherwise).
        classes: class names, indexed by class id.
        colours: one RGB colour per class (:func:`examples.datasets.dataset_palette`).
    """

    def __init__(
        self, folder: Path, dataset: Dataset, classes: tuple[str, ...], colours: Sequence[Colour]
    ) -> None:
        from examples.visualize_attention import draw_legend  # matplotlib

        self.labels, self.colour = folder / "labels", folder / "colour"
        self.labels.mkdir(parents=True, exist_ok=True)
        self.colour.mkdir(parents=True, exist_ok=True)
        self.to_file_values = getattr(dataset, "to_label_file_values", lambda ids: ids)
        # PIL palettes are flat RGB lists of 256 entries; the void value 255 in VOID_COLOUR
        self.palette = np.zeros((256, 3), dtype=np.uint8)
        self.palette[: len(classes)] = np.asarray(colours, dtype=np.uint8)
        self.palette[255] = VOID_COLOUR
        draw_legend(classes, colours, folder / "legend.png")

    def write(self, name: str, prediction: np.ndarray) -> None:
        """Save ``(H, W)`` class ids as ``labels/NAME.png`` and ``colour/NAME.png``."""
        from PIL import Image

        ids = prediction.astype(np.uint8)
        Image.fromarray(self.to_file_values(ids).astype(np.uint8), mode="L").save(
            self.labels / f"{name}.png"
        )
        colour = Image.fromarray(ids, mode="P")
        colour.putpalette(self.palette.flatten().tolist())
        colour.save(self.colour / f"{name}.png")


def with_progress(items: Iterable, total: int, metrics: SegmentationMetrics) -> Iterator:
    """``items`` with a progress bar on stderr showing the running mIoU (lines without tqdm)."""
    try:
        from tqdm import tqdm
    except ImportError:  # the examples extra brings tqdm
        step = max(1, total // 20)
        for index, item in enumerate(items, 1):
            yield item
            if index % step == 0 or index == total:
                print(f"{index}/{total} images, mIoU so far {metrics.miou():.4f}", file=sys.stderr)
        return
    with tqdm(items, total=total, unit="image", file=sys.stderr, dynamic_ncols=True) as bar:
        for item in bar:
            yield item
            bar.set_postfix(miou=f"{metrics.miou():.4f}", refresh=False)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    try:
        model, checkpoint = load_model(args.checkpoint, device)
    except (CheckpointError, FileNotFoundError) as error:
        raise fail(str(error)) from None
    classes = tuple(checkpoint["classes"])
    dataset = build_eval_set(args, checkpoint["args"])
    names = output_names(dataset)
    writer = None
    if args.save_predictions is not None:
        colours = dataset_palette(checkpoint["args"].get("dataset"), len(classes))
        writer = PredictionWriter(args.save_predictions, dataset, classes, colours)
    if args.limit is not None:
        dataset = Subset(dataset, range(min(args.limit, len(dataset))))
    metrics = SegmentationMetrics(len(classes), device=device)
    batches = DataLoader(dataset, batch_size=1)  # one image at a time: sizes differ
    for index, (image, label) in enumerate(with_progress(batches, len(dataset), metrics)):
        scores = predict_scores(model, image.to(device), crop_size=args.crop_size,
                                stride=args.stride, scales=args.scales, flip=args.flip,
                                recipe="danet")  # the paper's evaluation  # fmt: skip
        prediction = scores.argmax(dim=1)
        metrics.update(prediction, label.to(device))
        if writer is not None:
            writer.write(names[index], prediction[0].cpu().numpy())
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

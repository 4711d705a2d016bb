"""Draw what DANet's attention looks at, as Figure 4 of the paper does.

For an image and a trained checkpoint: the image with a few marked query pixels,
each point's PAM attention over the whole image (``PAM.attention_map``: only the
chosen rows of the attention, never the ``N x N`` matrix), and the CAM channels that
the channel attention changed most. Also draws predictions next to ground truth.

    python examples/visualize_attention.py --checkpoint runs/danet/checkpoint.pt
    python examples/visualize_attention.py --checkpoint CKPT --image a.png --points 120,300 40,80

The picture goes into the checkpoint's run folder unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `examples.*` when run as a script

from attnblocks.models import DANet
from attnblocks.models.base import SegmentationModel
from attnblocks.pretrained.datasets import Colour
from examples.checkpoints import CheckpointError, load_model
from examples.cli import HelpFormatter, device_problem
from examples.datasets import VOID_COLOUR, dataset_palette
from examples.transforms import denormalize, normalize

_POINT_COLOURS = ("#ff2d2d", "#2dd4ff", "#ffd22d", "#b24dff", "#3dff6e")


def label_picture(labels: np.ndarray, colours: Sequence[Colour]) -> np.ndarray:
    """``(H, W)`` class ids as ``(H, W, 3)`` uint8 RGB; void (any other value) in ``VOID_COLOUR``.

    Args:
        labels: class ids; 255 (or anything outside the palette) for void pixels.
        colours: one RGB colour per class (:func:`examples.datasets.dataset_palette`).
    """
    table = np.array([*colours, VOID_COLOUR], dtype=np.uint8)
    ids = np.asarray(labels).astype(np.int64)
    return table[np.where((ids >= 0) & (ids < len(colours)), ids, len(colours))]


def _patches(colours: Sequence[Colour]) -> list:
    """Legend patches, one per colour."""
    return [plt.Rectangle((0, 0), 1, 1, color=np.array(c) / 255) for c in colours]


def draw_legend(classes: Sequence[str], colours: Sequence[Colour], path: Path) -> None:
    """Save the class names beside their colours as a PNG.

    Args:
        classes: class names, indexed by class id.
        colours: one RGB colour per class (:func:`examples.datasets.dataset_palette`).
        path: PNG to write.
    """
    rows = 25  # names per column
    columns = -(-len(classes) // rows)
    fig = plt.figure(figsize=(2.4 * columns, 0.25 * min(len(classes), rows) + 0.3))
    labels = [f"{index} {name}" for index, name in enumerate(classes)]
    fig.legend(_patches(colours), labels, loc="center", ncol=columns, fontsize=8, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def points_on_classes(
    label: Tensor, classes: Sequence[int], count: int = 3
) -> list[tuple[int, int]]:
    """Up to ``count`` query pixels, one inside each of the first present ``classes``.

    Args:
        label: ``(H, W)`` label map.
        classes: class indices in order of preference.
        count: how many points at most.
    """
    points = []
    for cls in classes:
        inside = (label == cls).nonzero()
        if len(inside):
            row, col = inside[
                len(inside) // 2
            ].tolist()  # a pixel in the middle of the class's pixels
            points.append((row, col))
        if len(points) == count:
            break
    return points


def _to_picture(image: Tensor) -> np.ndarray:
    return denormalize(image.detach().float().cpu()).permute(1, 2, 0).numpy()


def check_points(points: Sequence[tuple[int, int]], height: int, width: int) -> None:
    """Raise a ValueError for a query point outside an ``height x width`` image.

    Args:
        points: ``(row, col)`` pixels.
        height: image rows.
        width: image columns.
    """
    outside = [(r, c) for r, c in points if not (0 <= r < height and 0 <= c < width)]
    if outside:
        raise ValueError(
            f"query points {outside} lie outside the {height} x {width} image: rows must be "
            f"0..{height - 1} and columns 0..{width - 1}"
        )


def _colour_bar(fig: plt.Figure, shown: Any, ax: plt.Axes, label: str) -> None:
    """A slim colour bar beside ``ax`` for what ``shown`` maps to colours."""
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    bar.ax.tick_params(labelsize=6)
    bar.set_label(label, fontsize=7)


@torch.no_grad()
def draw_attention(
    model: DANet, image: Tensor, path: Path, points: Sequence[tuple[int, int]] | None = None
) -> None:
    """Save a figure of PAM attention for ``points`` and the CAM channels attention changed most.

    Args:
        model: a DANet.
        image: ``(3, H, W)`` normalised image.
        path: PNG to write.
        points: query pixels ``(row, col)`` in image coordinates (default or empty: three
            spread out); a point outside the image raises a ValueError.
    """
    model.eval()
    height, width = image.shape[-2:]
    if points:
        check_points(points, height, width)
    else:
        points = [
            (height // 4, width // 4),
            (height // 2, 3 * width // 4),
            (3 * height // 4, width // 3),
        ]
    captured: dict[str, Tensor] = {}
    pam, cam = model.head.attention.pam, model.head.attention.cam
    hooks = [
        pam.register_forward_hook(lambda m, args, out: captured.update(pam_in=args[0])),
        cam.register_forward_hook(
            lambda m, args, out: captured.update(cam_in=args[0], cam_out=out)
        ),
    ]
    try:
        model(image[None])
    finally:
        for hook in hooks:
            hook.remove()
    features = captured["pam_in"]  # (1, C, h, w): what PAM attends over
    feat_h, feat_w = features.shape[-2:]
    # Image pixel -> the feature cell that covers it (points are inside the image).
    cells = [(r * feat_h // height, c * feat_w // width) for r, c in points]
    maps = pam.attention_map(features, cells)[0]  # (P, h, w), each sums to 1
    maps = F.interpolate(maps[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    # CAM channels whose maps the channel attention changed most: |out - in| summed over space.
    change = (captured["cam_out"] - captured["cam_in"]).abs().flatten(2).sum(-1)[0]
    channels = change.topk(min(2, change.numel())).indices.tolist()

    picture = _to_picture(image)
    columns = 1 + len(points) + len(channels)
    fig, axes = plt.subplots(1, columns, figsize=(3.0 * columns, 2.9))
    axes[0].imshow(picture)
    axes[0].set_title("image and query points", fontsize=8)
    for index, ((row, col), ax) in enumerate(zip(points, axes[1 : 1 + len(points)])):
        colour = _POINT_COLOURS[index % len(_POINT_COLOURS)]
        axes[0].plot(col, row, marker="o", markersize=7, color=colour, markeredgecolor="black")
        ax.imshow(picture)
        shown = ax.imshow(maps[index].cpu().numpy(), cmap="jet", alpha=0.55)
        ax.plot(col, row, marker="o", markersize=7, color=colour, markeredgecolor="black")
        ax.set_title(f"PAM attention of point {index + 1}", fontsize=8)
        _colour_bar(fig, shown, ax, "attention weight")
    for channel, ax in zip(channels, axes[1 + len(points) :]):
        shown = ax.imshow(captured["cam_out"][0, channel].cpu().numpy(), cmap="viridis")
        ax.set_title(f"CAM output, channel {channel}", fontsize=8)
        _colour_bar(fig, shown, ax, "activation")
    for ax in axes:
        ax.axis("off")
    gammas = f"gamma: PAM {pam.gamma.item():.3f}, CAM {cam.gamma.item():.3f}"
    fig.suptitle(f"DANet attention ({gammas})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def draw_predictions(
    model: SegmentationModel,
    images: Sequence[Tensor],
    labels: Sequence[Tensor],
    classes: Sequence[str],
    path: Path,
    colours: Sequence[Colour] | None = None,
) -> None:
    """Save images, ground truth and predictions side by side (one row per image).

    Args:
        model: any segmentation model of the package.
        images: normalised ``(3, H, W)`` images, each of its own size (or a
            ``(B, 3, H, W)`` batch).
        labels: their ``(H, W)`` ground truth (255 = ignored, drawn in ``VOID_COLOUR``).
        classes: class names, for the legend.
        path: PNG to write.
        colours: one RGB colour per class: the dataset's palette
            (:func:`examples.datasets.dataset_palette`; None: the generic one).
    """
    model.eval()
    colours = colours if colours is not None else dataset_palette(None, len(classes))
    predictions = [model.predict(image[None])[0].cpu() for image in images]
    fig, axes = plt.subplots(len(images), 3, figsize=(7.5, 2.4 * len(images)), squeeze=False)
    for row, (image, label, prediction) in enumerate(zip(images, labels, predictions)):
        axes[row, 0].imshow(_to_picture(image))
        axes[row, 1].imshow(label_picture(label.cpu().numpy(), colours), interpolation="nearest")
        axes[row, 2].imshow(label_picture(prediction.numpy(), colours), interpolation="nearest")
    for ax, title in zip(axes[0], ("image", "ground truth (void: grey)", "prediction")):
        ax.set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.legend(_patches(colours), classes, loc="lower center", ncol=min(len(classes), 7),
               fontsize=7)  # fmt: skip
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parse_point(text: str) -> tuple[int, int]:
    try:
        row, col = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a point is ROW,COL in pixels, got {text!r}") from None
    return row, col


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="visualize_attention.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint of examples/train.py"
    )
    parser.add_argument("--image", type=Path, help="an image file (default: a synthetic scene)")
    parser.add_argument("--synthetic-index", type=int, default=0,
                        help="synthetic validation scene used without --image")  # fmt: skip
    parser.add_argument("--points", type=_parse_point, nargs="+", metavar="ROW,COL",
                        help="query pixels (default: three spread over the image)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="PNG to write (default: attention-IMAGE.png "
                        "beside the checkpoint, in its run folder)")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    if (problem := device_problem(args.device)) is not None:
        parser.error(problem)

    try:
        model, _ = load_model(args.checkpoint, torch.device(args.device))
    except (CheckpointError, FileNotFoundError) as error:
        parser.error(str(error))
    if not isinstance(model, DANet):
        parser.error(f"{args.checkpoint} holds a {type(model).__name__}; this script draws "
                     "DANet's position and channel attention")  # fmt: skip
    if args.image is not None:
        from PIL import Image

        try:
            array = np.asarray(Image.open(args.image).convert("RGB"))
        except OSError as error:
            parser.error(f"cannot read image {args.image}: {error}")
        image = normalize(torch.from_numpy(array.copy()).permute(2, 0, 1))
    else:
        from examples.train import synthetic_validation_set

        image = synthetic_validation_set(seed=0)[args.synthetic_index][0]  # normalised already
    if args.points:
        try:
            check_points(args.points, *image.shape[-2:])
        except ValueError as error:
            parser.error(f"--points: {error}")
    name = args.image.stem if args.image is not None else f"synthetic-{args.synthetic_index}"
    out = args.out or args.checkpoint.parent / f"attention-{name}.png"
    draw_attention(model, image.to(args.device), out, args.points)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Draw what DANet's attention looks at, as Figure 4 of the paper does.

For an image and a trained checkpoint: the image with a few marked query pixels,
each point's PAM attention over the whole image (``PAM.attention_map``: only the
chosen rows of the attention, never the ``N x N`` matrix), and the CAM channels that
the channel attention changed most. Also draws predictions next to ground truth.

    python examples/visualize_attention.py --checkpoint runs/danet/checkpoint.pt
    python examples/visualize_attention.py --checkpoint CKPT --image a.png --points 120,300 40,80
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import ListedColormap
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `examples.*` when run as a script

from attnblocks.models import DANet
from examples.transforms import denormalize, normalize

_POINT_COLOURS = ("#ff2d2d", "#2dd4ff", "#ffd22d", "#b24dff", "#3dff6e")


def palette(num_classes: int) -> ListedColormap:
    """A colour per class (tab10 up to 10 classes, tab20 cycled beyond), for label maps."""
    colours = plt.get_cmap("tab10" if num_classes <= 10 else "tab20").colors
    return ListedColormap([colours[i % len(colours)] for i in range(num_classes)])


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


@torch.no_grad()
def draw_attention(
    model: DANet, image: Tensor, path: Path, points: Sequence[tuple[int, int]] | None = None
) -> None:
    """Save a figure of PAM attention for ``points`` and the CAM channels attention changed most.

    Args:
        model: a DANet.
        image: ``(3, H, W)`` normalised image.
        path: PNG to write.
        points: query pixels ``(row, col)`` in image coordinates (default: three spread out).
    """
    model.eval()
    height, width = image.shape[-2:]
    if points is None:
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
    # Image pixel -> the feature cell that covers it.
    cells = [
        (min(r * feat_h // height, feat_h - 1), min(c * feat_w // width, feat_w - 1))
        for r, c in points
    ]
    maps = pam.attention_map(features, cells)[0]  # (P, h, w), each sums to 1
    maps = F.interpolate(maps[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    # CAM channels whose maps the channel attention changed most: |out - in| summed over space.
    change = (captured["cam_out"] - captured["cam_in"]).abs().flatten(2).sum(-1)[0]
    channels = change.topk(min(2, change.numel())).indices.tolist()

    picture = _to_picture(image)
    columns = 1 + len(points) + len(channels)
    fig, axes = plt.subplots(1, columns, figsize=(2.6 * columns, 2.9))
    axes[0].imshow(picture)
    axes[0].set_title("image and query points", fontsize=8)
    for index, ((row, col), ax) in enumerate(zip(points, axes[1 : 1 + len(points)])):
        colour = _POINT_COLOURS[index % len(_POINT_COLOURS)]
        axes[0].plot(col, row, marker="o", markersize=7, color=colour, markeredgecolor="black")
        ax.imshow(picture)
        ax.imshow(maps[index].cpu().numpy(), cmap="jet", alpha=0.55)
        ax.plot(col, row, marker="o", markersize=7, color=colour, markeredgecolor="black")
        ax.set_title(f"PAM attention of point {index + 1}", fontsize=8)
    for channel, ax in zip(channels, axes[1 + len(points) :]):
        ax.imshow(captured["cam_out"][0, channel].cpu().numpy(), cmap="viridis")
        ax.set_title(f"CAM output, channel {channel}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    gammas = f"gamma: PAM {pam.gamma.item():.3f}, CAM {cam.gamma.item():.3f}"
    fig.suptitle(f"DANet attention ({gammas})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def draw_predictions(
    model: DANet, images: Tensor, labels: Tensor, classes: Sequence[str], path: Path
) -> None:
    """Save images, ground truth and predictions side by side (one row per image).

    Args:
        model: a DANet.
        images: ``(B, 3, H, W)`` normalised images.
        labels: ``(B, H, W)`` ground truth (255 = ignored, drawn black).
        classes: class names, for the legend.
        path: PNG to write.
    """
    model.eval()
    predictions = model(images).out.argmax(dim=1).cpu()
    colours = palette(len(classes))
    fig, axes = plt.subplots(len(images), 3, figsize=(7.5, 2.4 * len(images)), squeeze=False)
    for row, (image, label, prediction) in enumerate(zip(images, labels, predictions)):
        truth = np.ma.masked_equal(label.cpu().numpy(), 255)
        axes[row, 0].imshow(_to_picture(image))
        axes[row, 1].imshow(
            truth, cmap=colours, vmin=0, vmax=len(classes) - 1, interpolation="nearest"
        )
        axes[row, 1].set_facecolor("black")
        axes[row, 2].imshow(prediction.numpy(), cmap=colours, vmin=0, vmax=len(classes) - 1,
                            interpolation="nearest")  # fmt: skip
    for ax, title in zip(axes[0], ("image", "ground truth", "prediction")):
        ax.set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i)) for i in range(len(classes))]
    fig.legend(handles, classes, loc="lower center", ncol=min(len(classes), 7), fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_checkpoint(path: Path, device: torch.device) -> tuple[DANet, tuple[str, ...]]:
    """A DANet and its class names from a checkpoint of examples/train.py."""
    checkpoint = torch.load(path, map_location=device, weights_only=False)
    model = DANet(**checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), tuple(checkpoint["classes"])


def _parse_point(text: str) -> tuple[int, int]:
    try:
        row, col = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a point is ROW,COL in pixels, got {text!r}") from None
    return row, col


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint of examples/train.py"
    )
    parser.add_argument("--image", type=Path, help="an image file (default: a synthetic scene)")
    parser.add_argument("--synthetic-index", type=int, default=0,
                        help="synthetic validation scene used without --image")  # fmt: skip
    parser.add_argument("--points", type=_parse_point, nargs="+", metavar="ROW,COL",
                        help="query pixels (default: three spread over the image)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("attention.png"), help="PNG to write")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    model, _ = load_checkpoint(args.checkpoint, torch.device(args.device))
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
    draw_attention(model, image.to(args.device), args.out, args.points)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

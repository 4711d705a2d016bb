"""Label one image with a pretrained DANet or CCNet: colour label map, overlay with a legend.

The checkpoint is an mmsegmentation release (``--mmseg``: a ``.pth`` file, or a config
name of ``attnblocks.pretrained.MMSEG_CHECKPOINTS``, downloaded once with its hash
checked), a ``save_pretrained`` folder, or a ``checkpoint.pt`` of examples/train.py.
The model's pretrained config supplies the normalisation, test resize, sliding window,
class names and colours. ``--model`` says which network the weights are for; without it,
a recognised mmseg release (by config or file name) or a train.py checkpoint says so,
and anything else is DANet.

    python examples/segment.py street.png --mmseg \\
        --checkpoint danet_r50-d8_512x1024_80k_cityscapes_20200607_133029-2bfa2293.pth
    python examples/segment.py street.png --mmseg \\
        --checkpoint danet_r50-d8_4xb2-80k_cityscapes-512x1024   # downloads it once
    python examples/segment.py street.png --mmseg \
        --checkpoint ccnet_r50-d8_4xb2-80k_cityscapes-512x1024   # CCNet, from its name
    python examples/segment.py photo.jpg --model ccnet --checkpoint my-ccnet/
    python examples/segment.py photo.jpg --checkpoint my-danet/        # a save_pretrained folder
    python examples/segment.py scene.png --checkpoint runs/danet/checkpoint.pt

Writes ``OUT/<image name>_labels.png`` (one colour per class) and
``OUT/<image name>_overlay.png`` (the image under the colours, with a legend of the
classes present and their share of the pixels).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `examples.*` when run as a script

from attnblocks.models import DANet
from attnblocks.models.base import SegmentationModel
from attnblocks.pretrained import PretrainedConfig, bit_palette, find_mmseg_checkpoint, read_rgb
from examples.checkpoints import MODELS, model_name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add = parser.add_argument
    add("image", type=Path, help="the image to label (any format Pillow reads)")
    add("--checkpoint", required=True,
        help="mmseg .pth file or config name (with --mmseg), save_pretrained folder, or "
             "checkpoint.pt of examples/train.py")  # fmt: skip
    add("--mmseg", action="store_true", help="the checkpoint is an mmsegmentation release")
    add(
        "--model",
        choices=sorted(MODELS),
        help="the network of the weights (default: a recognised mmseg release's, else danet)",
    )
    add("--out", type=Path, default=Path("runs/segment"), help="folder for the two pictures")
    add("--alpha", type=float, default=0.5, help="opacity of the colours over the image")
    add("--crop-size", type=int, help="sliding-window size (default: the model's config)")
    add("--stride", type=int, help="sliding-window step (default: 2/3 of the crop)")
    add("--whole", action="store_true", help="predict the whole image at once, no windows")
    add("--scales", type=float, nargs="+", default=[1.0], help="scales to average")
    add("--flip", action="store_true", help="also average the mirrored image")
    add("--no-resize", action="store_true", help="skip the model's test resize")
    add("--attention-backend", default="auto",
        help="DANet's PAM backend: auto, bmm, chunked, sdpa")  # fmt: skip
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def model_class(args: argparse.Namespace, trained: str | None = None) -> type[SegmentationModel]:
    """``--model``'s class; without it, a recognised mmseg release's, else ``trained`` (the
    ``model_name`` of an examples/train.py checkpoint), else DANet."""
    if args.model is not None:
        return MODELS[args.model]
    release = find_mmseg_checkpoint(args.checkpoint) if args.mmseg else None
    name = release.model if release is not None else trained or "danet"
    return MODELS[name]


def load_model(args: argparse.Namespace) -> SegmentationModel:
    """The model of ``--checkpoint``, with its pretrained config, in eval mode."""
    path, checkpoint = Path(args.checkpoint), None
    if not args.mmseg and not path.is_dir():
        if not path.is_file():
            raise SystemExit(f"no checkpoint at {path} (add --mmseg for an mmseg config name)")
        # examples/train.py's checkpoint: our own file, pickled with its training arguments
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model_type = model_class(args, None if checkpoint is None else model_name(checkpoint))
    options = {}
    if model_type is DANet:
        options["attention_backend"] = args.attention_backend
    elif args.attention_backend != "auto":
        raise SystemExit("--attention-backend chooses DANet's PAM backend; CCNet has no PAM")
    if args.mmseg:
        return model_type.from_mmseg(args.checkpoint, **options)
    if checkpoint is None:
        return model_type.from_pretrained(path, **options)
    classes = tuple(checkpoint["classes"])
    config = PretrainedConfig(class_names=classes, palette=bit_palette(len(classes)))
    model = model_type(**{**checkpoint["model_config"], **options}, pretrained_config=config)
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def window_options(args: argparse.Namespace) -> dict:
    """``predict_image`` keywords for the sliding window: the config's unless told otherwise."""
    if args.whole:
        return {"crop_size": None, "stride": None}
    if args.crop_size is not None:
        return {"crop_size": args.crop_size, "stride": args.stride}
    return {}


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` pixels (a fixed small bitmap font on old Pillow)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sizes
        return ImageFont.load_default()


def legend(config: PretrainedConfig, labels: np.ndarray, height: int) -> Image.Image:
    """A white panel listing the classes present, most pixels first, with colour and share."""
    ids, counts = np.unique(labels, return_counts=True)
    order = [(int(i), c / labels.size) for i, c in sorted(zip(ids, counts), key=lambda p: -p[1])]
    order = [(i, share) for i, share in order if i < config.num_classes]  # no void
    row = max(14, min(28, height // max(len(order), 1)))  # every class fits in the height
    font = _font(row * 3 // 4)
    lines = [f"{config.class_names[i]}  {f'{100 * share:.1f}%' if share >= 5e-4 else '<0.1%'}"
             for i, share in order]  # fmt: skip
    width = row * 2 + max(int(font.getlength(line)) for line in lines) + row // 2
    panel = Image.new("RGB", (width, max(height, row * len(order))), "white")
    draw = ImageDraw.Draw(panel)
    for index, ((label, _), line) in enumerate(zip(order, lines)):
        top = index * row
        draw.rectangle((row // 4, top + row // 8, row + row // 4, top + row - row // 8),
                       fill=config.palette[label], outline="black")  # fmt: skip
        draw.text((row * 3 // 2, top + row // 2), line, fill="black", font=font, anchor="lm")
    return panel


def segment(args: argparse.Namespace) -> dict:
    """Predict, then write the label map and the overlay; returns paths and classes present."""
    model = load_model(args).to(args.device)
    image = Image.fromarray(read_rgb(args.image).permute(1, 2, 0).numpy())  # EXIF applied
    labels = model.predict_image(
        args.image, scales=args.scales, flip=args.flip, resize=not args.no_resize,
        **window_options(args),
    )  # fmt: skip
    config = model.pretrained_config
    colours = Image.fromarray(config.colorize(labels).numpy())
    overlay = Image.blend(image, colours, args.alpha)
    panel = legend(config, labels.numpy(), image.height)
    picture = Image.new(
        "RGB", (image.width + panel.width, max(image.height, panel.height)), "white"
    )
    picture.paste(overlay, (0, 0))
    picture.paste(panel, (image.width, 0))
    args.out.mkdir(parents=True, exist_ok=True)
    paths = {"labels": args.out / f"{args.image.stem}_labels.png",
             "overlay": args.out / f"{args.image.stem}_overlay.png"}  # fmt: skip
    colours.save(paths["labels"])
    picture.save(paths["overlay"])
    present = [config.class_names[i] for i in labels.unique().tolist() if i < config.num_classes]
    print(f"{len(present)} classes: {', '.join(present)}")
    print(f"wrote {paths['labels']} and {paths['overlay']}")
    return {**paths, "classes": present, "labels_map": labels}


def main(argv: list[str] | None = None) -> dict:
    return segment(parse_args(argv))


if __name__ == "__main__":
    main()

"""Label one image with a pretrained segmentation model: colour label map, overlay with a legend.

The checkpoint is an mmsegmentation release (a ``.pth`` file, recognised by its
contents, or a config name of ``attnblocks.pretrained.MMSEG_CHECKPOINTS`` or URL,
downloaded once with its hash checked), a ``save_pretrained`` folder, or a
``checkpoint.pt`` of examples/train.py. The model's pretrained config supplies the
normalisation, test resize, sliding window, class names and colours (a train.py
checkpoint: its dataset's palette, the one of train.py's and evaluate.py's pictures).
The model class comes from the checkpoint: ``attnblocks.models.from_mmseg`` reads an mmseg
release's, a folder's ``config.json`` and a train.py checkpoint name theirs; ``--model``
overrides (e.g. for an mmseg file that says nothing about its model).

    python examples/segment.py street.png \
        --checkpoint danet_r50-d8_512x1024_80k_cityscapes_20200607_133029-2bfa2293.pth
    python examples/segment.py street.png \
        --checkpoint danet_r50-d8_4xb2-80k_cityscapes-512x1024   # downloads it once
    python examples/segment.py street.png \
        --checkpoint ccnet_r50-d8_4xb2-80k_cityscapes-512x1024   # CCNet, from its name
    python examples/segment.py photo.jpg --checkpoint my-ccnet/         # a save_pretrained folder
    python examples/segment.py scene.png --checkpoint runs/danet/checkpoint.pt

Writes ``OUT/<image name>_labels.png`` (one colour per class) and
``OUT/<image name>_overlay.png`` (the image under the colours, with a legend of the
classes present and their share of the pixels).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `examples.*` when run as a script

from attnblocks.compat._checkpoint import check_checkpoint_format
from attnblocks.functional import POSITION_BACKENDS
from attnblocks.models import DANet, from_mmseg
from attnblocks.models.base import SegmentationModel
from attnblocks.pretrained import PretrainedConfig, find_mmseg_checkpoint, read_rgb
from examples.checkpoints import (
    MODELS,
    CheckpointError,
    constructor_parameters,
    model_class_named,
    model_name,
    read_checkpoint,
)
from examples.cli import (
    HelpFormatter,
    device_problem,
    fraction,
    key_value,
    positive_float,
    positive_int,
)
from examples.datasets import labels_config


class SegmentError(Exception):
    """A problem with the command line's files, said in one line."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="segment.py", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    add = parser.add_argument
    add("image", type=Path, help="the image to label (any format Pillow reads)")
    add("--checkpoint", required=True,
        help="mmseg .pth file, config name or URL; save_pretrained folder; or checkpoint.pt "
             "of examples/train.py")  # fmt: skip
    add("--mmseg", action="store_true",
        help="the checkpoint is an mmsegmentation release (recognised without it)")  # fmt: skip
    add(
        "--model",
        choices=sorted(MODELS),
        help="the network of the weights (default: the one the checkpoint names; DANet for "
        "a save_pretrained folder that names none)",
    )
    add("--model-arg", type=key_value, action="append", default=[], metavar="KEY=VALUE",
        help="another argument of the model's constructor, e.g. chunk_size=1024 (a Python "
             "literal, else text); repeat for more")  # fmt: skip
    add("--out", type=Path, default=Path("runs/segment"), help="folder for the two pictures")
    add("--alpha", type=fraction, default=0.5, help="opacity of the colours over the image, 0-1")
    add("--crop-size", type=positive_int, help="sliding-window size (default: the model's config)")
    add("--stride", type=positive_int, help="sliding-window step (default: 2/3 of the crop)")
    add("--whole", action="store_true", help="predict the whole image at once, no windows")
    add("--scales", type=positive_float, nargs="+", default=[1.0], help="scales to average")
    add("--flip", action="store_true", help="also average the mirrored image")
    add("--no-resize", action="store_true", help="skip the model's test resize")
    add("--attention-backend", choices=POSITION_BACKENDS,
        help="the position-attention backend of models that take one (DANet's PAM) "
             "(default: auto)")  # fmt: skip
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    if (problem := device_problem(args.device)) is not None:
        parser.error(problem)
    args.model_arg = dict(args.model_arg)
    return args


def model_options(args: argparse.Namespace, model_class: type[SegmentationModel] | None) -> dict:
    """Constructor keywords from ``--model-arg`` and ``--attention-backend``.

    Checked against ``model_class``'s constructor when the class is known here (else the
    loading reports a keyword the model does not take).
    """
    options: dict[str, Any] = dict(args.model_arg)
    if args.attention_backend is not None:
        options["attention_backend"] = args.attention_backend
    if model_class is not None:
        parameters = constructor_parameters(model_class)
        for key in options:
            if key not in parameters:
                flag = "--attention-backend" if key == "attention_backend" else "--model-arg"
                raise SegmentError(f"{flag}: {model_class.__name__} takes no {key!r}")
    return options


def mmseg_class(args: argparse.Namespace, source: str) -> type[SegmentationModel] | None:
    """``--model``'s class, else the class of the release ``source`` names (None: unknown)."""
    if args.model is not None:
        return MODELS[args.model]
    release = find_mmseg_checkpoint(source)
    return MODELS.get(release.model) if release is not None else None


def load_mmseg(args: argparse.Namespace, source: str) -> SegmentationModel:
    """An mmseg release: its class from ``--model``, else through ``from_mmseg``."""
    model_class = mmseg_class(args, source)
    options = model_options(args, model_class)
    try:
        if model_class is not None:
            return model_class.from_mmseg(source, **options)
        return from_mmseg(source, **options)
    except TypeError as error:  # a keyword the recognised class does not take
        if "unexpected keyword argument" not in str(error):
            raise
        raise SegmentError(f"--model-arg/--attention-backend: {error}") from None


def load_folder(args: argparse.Namespace, folder: Path) -> SegmentationModel:
    """A ``save_pretrained`` folder, with the class its ``config.json`` names."""
    model_class = MODELS[args.model] if args.model is not None else None
    config_file = folder / "config.json"
    if model_class is None and config_file.is_file():
        saved = json.loads(config_file.read_text()).get("model_class")
        model_class = model_class_named(saved) if saved is not None else None
        if saved is not None and model_class is None:
            raise SegmentError(f"{folder} holds a {saved}, which attnblocks does not know")
    model_class = model_class or DANet  # a folder saved before config.json named its class
    return model_class.from_pretrained(folder, **model_options(args, model_class))


def is_train_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint of examples/train.py rather than mmseg weights.

    Weights of mmseg load with ``weights_only=True``; train.py's checkpoints hold its
    random states too (numpy arrays), which that refuses.
    """
    check_checkpoint_format(path)  # text, empty or truncated files: an error naming them
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return True  # more than tensors: examples.checkpoints reads (and checks) our own files
    except Exception:
        return True  # damaged: examples.checkpoints says so, naming the file
    return isinstance(contents, dict) and "model_config" in contents


def load_train_checkpoint(args: argparse.Namespace, path: Path) -> SegmentationModel:
    """A checkpoint of examples/train.py, coloured with its dataset's palette."""
    checkpoint = read_checkpoint(path)
    name = args.model or model_name(checkpoint)
    if name not in MODELS:
        raise SegmentError(f"{path} holds a model named {name!r}; expected one of {sorted(MODELS)}")
    classes = tuple(checkpoint["classes"])
    config = labels_config(checkpoint.get("args", {}).get("dataset"), classes)
    options = model_options(args, MODELS[name])
    model = MODELS[name](**{**checkpoint["model_config"], **options}, pretrained_config=config)
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def load_model(args: argparse.Namespace) -> SegmentationModel:
    """The model of ``--checkpoint``, with its pretrained config, in eval mode.

    Raises:
        SegmentError, CheckpointError, ValueError, OSError: what is wrong with the
            checkpoint, in one line.
    """
    source = str(args.checkpoint)
    path = Path(source)
    if path.is_dir():
        return load_folder(args, path)
    if path.is_file():
        if not args.mmseg and is_train_checkpoint(path):
            return load_train_checkpoint(args, path)
        return load_mmseg(args, source)
    if find_mmseg_checkpoint(source) is not None or "://" in source:
        return load_mmseg(args, source)  # a release's name or URL: downloaded once
    raise SegmentError(
        f"no checkpoint at {path}: expected a file, a save_pretrained folder, or a config "
        "name of attnblocks.pretrained.MMSEG_CHECKPOINTS"
    )


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


def read_image(path: Path) -> Image.Image:
    """The image as RGB with its EXIF orientation applied, as ``predict_image`` reads it
    (the overlay must line up with the labels); a missing or unreadable file is a
    :class:`SegmentError`."""
    if not path.is_file():
        raise SegmentError(f"no image at {path}")
    try:
        return Image.fromarray(read_rgb(path).permute(1, 2, 0).numpy())
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise SegmentError(f"cannot read the image {path}: {error}") from None


def segment(args: argparse.Namespace) -> dict:
    """Predict, then write the label map and the overlay; returns paths and classes present."""
    image = read_image(args.image)  # before the model: a wrong path fails at once
    model = load_model(args).to(args.device)
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
    """Run :func:`segment` from the command line; a problem is one line on stderr (status 1)."""
    args = parse_args(argv)
    try:
        return segment(args)
    except (SegmentError, CheckpointError, ValueError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise SystemExit(f"segment.py: error: {message}") from None


if __name__ == "__main__":
    main()

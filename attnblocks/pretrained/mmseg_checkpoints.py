"""mmsegmentation's released checkpoints of attention models: where, how good, how to fetch.

The release table is data: ``mmseg_releases.json`` beside this file, one release a line,
written from mmsegmentation 1.2.2's ``configs/*/metafile.yaml`` and config files by
``tests/data/mm_reference/generate/make_release_table.py`` (facts only: config name,
dataset, training crop and iterations, backbone, validation mIoU single-scale and with
multi-scale + flip testing where published, the download path, and the test setting:
resize, sliding window, ``align_corners``). Every file name ends in a prefix of the
file's SHA-256, which ``torch.hub.load_state_dict_from_url(..., check_hash=True)``
verifies.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from http.client import HTTPException
from pathlib import Path
from typing import Any, NamedTuple
from urllib.error import URLError

import torch

from ..compat.mmseg_config import MMSegTestSetup, mmseg_test_setup
from .config import PretrainedConfig
from .datasets import DATASETS, bit_palette, dataset_for_num_classes

MMSEG_DOWNLOAD_ROOT = "https://download.openmmlab.com/mmsegmentation/v0.5/"
_RELEASES_FILE = Path(__file__).with_name("mmseg_releases.json")


class MMSegCheckpoint(NamedTuple):
    """One released mmseg checkpoint: a row of ``mmseg_releases.json``.

    The file is ``{MMSEG_DOWNLOAD_ROOT}{weights}``.
    """

    config: str  #: mmseg 1.x config name, e.g. "danet_r50-d8_4xb2-40k_cityscapes-512x1024"
    model: str  #: this package's model: "danet", "ccnet", "nlnet", ... (lower-case class name)
    dataset: str  #: "cityscapes", "ade20k" or "voc" (VOC 2012 + SBD "aug" for training)
    backbone: str  #: mmseg's name of the backbone: "R-50-D8", "HRNetV2p-W18", ...
    crop: tuple[int, int]  #: training crop (h, w)
    iterations: int  #: training iterations
    miou: float  #: validation mIoU, single scale
    miou_ms_flip: float | None  #: mIoU with multi-scale + flip testing (None: unpublished)
    weights: str  #: the file's path under :data:`MMSEG_DOWNLOAD_ROOT`
    test_scale: tuple[int, int]  #: (long, short) edge bounds of mmseg's keep-ratio test resize
    test_crop: tuple[int, int] | None = None  #: sliding window at test time (None: whole)
    test_stride: tuple[int, int] | None = None  #: its step
    align_corners: bool = False  #: bilinear resizing of the logits as trained

    @property
    def file_name(self) -> str:
        """The checkpoint's file name."""
        return self.weights.rsplit("/", 1)[1]

    @property
    def run(self) -> str:
        """mmseg's run name, the download folder (``danet_r50-d8_512x1024_40k_cityscapes``)."""
        return self.weights.rsplit("/", 2)[1]

    @property
    def url(self) -> str:
        """Where to download it."""
        return f"{MMSEG_DOWNLOAD_ROOT}{self.weights}"

    @property
    def sha256_prefix(self) -> str:
        """The leading hex digits of the file's SHA-256, from its name."""
        return self.file_name.removesuffix(".pth").rsplit("-", 1)[1]


def _read_releases(path: Path) -> dict[str, MMSegCheckpoint]:
    """The release table by config name; JSON lists become tuples."""
    rows = json.loads(path.read_text())
    pairs = ("crop", "test_scale", "test_crop", "test_stride")
    entries = [
        MMSegCheckpoint(
            **{k: tuple(v) if k in pairs and v is not None else v for k, v in row.items()}
        )
        for row in rows
    ]
    return {entry.config: entry for entry in entries}


#: Every release of the table, by mmseg 1.x config name.
MMSEG_CHECKPOINTS: dict[str, MMSegCheckpoint] = _read_releases(_RELEASES_FILE)


def find_mmseg_checkpoint(name: str | Path) -> MMSegCheckpoint | None:
    """The table entry that ``name`` refers to, or None.

    Args:
        name: a config name (``"danet_r50-d8_4xb2-80k_cityscapes-512x1024"``), a
            download URL, or a path whose file name is a released file's name.
    """
    text = str(name)
    if text in MMSEG_CHECKPOINTS:
        return MMSEG_CHECKPOINTS[text]
    file_name = text.rsplit("/", 1)[-1] if "://" in text else Path(text).name
    return next((c for c in MMSEG_CHECKPOINTS.values() if c.file_name == file_name), None)


def load_mmseg_checkpoint(
    name_or_url: str, *, model_dir: str | Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """Download (once; cached by ``torch.hub``) and read a released mmseg checkpoint.

    The download is checked against the SHA-256 prefix in its file name
    (``check_hash=True``) and read with ``weights_only=True``.

    Args:
        name_or_url: a config name of :data:`MMSEG_CHECKPOINTS`, or any checkpoint URL.
        model_dir: where to keep the file (default: torch.hub's ``checkpoints`` folder).
        progress: show a progress bar while downloading.

    Returns:
        The checkpoint: ``{"meta": ..., "state_dict": ...}``.

    Raises:
        ValueError: for a name that is neither a known config nor a URL.
        ConnectionError: when the file cannot be downloaded (offline, say); the message
            gives the URL and how to pass a file downloaded another way.
        RuntimeError: from ``torch.hub`` when the file's hash does not match its name.
    """
    entry = find_mmseg_checkpoint(name_or_url)
    if entry is None and "://" not in name_or_url:
        raise ValueError(
            f"unknown mmseg checkpoint {name_or_url!r}; expected a URL or one of "
            f"{sorted(MMSEG_CHECKPOINTS)}"
        )
    url = entry.url if entry is not None else name_or_url
    try:
        return torch.hub.load_state_dict_from_url(
            url, model_dir=None if model_dir is None else str(model_dir), map_location="cpu",
            progress=progress, check_hash=True, weights_only=True,
        )  # fmt: skip
    except (URLError, HTTPException, ConnectionError, TimeoutError) as error:
        reason = getattr(error, "reason", None) or error
        file_name = url.rsplit("/", 1)[-1]
        raise ConnectionError(
            f"could not download the mmseg checkpoint {name_or_url!r} ({reason}) from {url}; "
            f"download it another way (e.g. wget {url}) and pass the file's path instead of "
            f'the name, e.g. from_mmseg("{file_name}") (keep its file name: it names the '
            "release)"
        ) from error


def _dataset_of(num_classes: int, setup: MMSegTestSetup, entry: MMSegCheckpoint | None):
    """The dataset whose defaults apply: the release's, else the meta's, else by class count;
    None when its class count is not ``num_classes``."""
    name = entry.dataset if entry is not None else setup.dataset
    info = DATASETS.get(name) if name is not None else dataset_for_num_classes(num_classes)
    return info if info is not None and len(info.classes) == num_classes else None


def mmseg_pretrained_config(
    num_classes: int, meta: Mapping[str, Any], entry: MMSegCheckpoint | None
) -> PretrainedConfig:
    """The :class:`PretrainedConfig` of an mmseg checkpoint: its test pipeline, classes, colours.

    Each source overrides the one before: the defaults of its dataset (the release's,
    else the one the meta's config tests on, else the one with ``num_classes`` classes;
    otherwise generic names and ImageNet statistics), then what the checkpoint's
    ``meta`` says (:func:`attnblocks.compat.mmseg_config.mmseg_test_setup`: test
    resize, whole or sliding-window decoding, normalisation, class names and palette),
    then the release ``entry`` (test resize and window). Class names and palette come
    from the meta when it has ``num_classes`` of them, else from the dataset.

    Args:
        num_classes: the checkpoint's number of classes.
        meta: the checkpoint's ``meta`` (may be empty).
        entry: the table entry the checkpoint was recognised as (by name, URL or file
            name), or None.
    """
    setup = mmseg_test_setup(meta)
    if setup.bgr_to_rgb is False:
        warnings.warn(
            "the checkpoint's model was trained on BGR images (bgr_to_rgb/to_rgb False); "
            "predict_image gives models RGB images",
            stacklevel=2,
        )
    info = _dataset_of(num_classes, setup, entry)
    settings: dict[str, Any] = (
        PretrainedConfig.for_dataset(info.name).to_dict()
        if info is not None
        else PretrainedConfig.generic(num_classes).to_dict()
    )
    if setup.class_names is not None and len(setup.class_names) == num_classes:
        settings["class_names"] = setup.class_names
        if info is None:  # names without a known dataset: the generic colours stay
            settings["palette"] = bit_palette(num_classes)
    if setup.palette is not None and len(setup.palette) == num_classes:
        settings["palette"] = setup.palette
    if setup.mean is not None and setup.std is not None:
        settings.update(mean=setup.mean, std=setup.std)
    if setup.image_scale is not None:
        settings["image_scale"] = setup.image_scale
    if setup.mode == "slide":
        settings.update(crop_size=setup.crop_size, stride=setup.stride)
    elif setup.mode == "whole":
        settings.update(crop_size=None, stride=None)
    if entry is not None:
        settings.update(
            image_scale=entry.test_scale, crop_size=entry.test_crop, stride=entry.test_stride
        )
    return PretrainedConfig(**settings)


def mmseg_align_corners(meta: Mapping[str, Any], entry: MMSegCheckpoint | None) -> bool:
    """The ``align_corners`` an mmseg checkpoint's head resizes its logits with.

    The release ``entry``'s, else the one the meta's config gives its (last) decode head,
    else mmseg's default, False.

    Args:
        meta: the checkpoint's ``meta`` (may be empty).
        entry: the release the checkpoint was recognised as, or None.
    """
    if entry is not None:
        return entry.align_corners
    found = mmseg_test_setup(meta).align_corners
    return bool(found) if found is not None else False

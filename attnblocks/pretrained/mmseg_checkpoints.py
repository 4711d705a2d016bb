"""mmsegmentation's released DANet and CCNet checkpoints: where, how good, how to fetch.

Facts from mmsegmentation's ``configs/{danet,ccnet}/metafile.yaml`` and READMEs: the 1.x
config name, dataset, training crop and iterations, mIoU on the validation set single-scale
and with multi-scale + flip testing (where published), and the download file. Every
file name ends in the first 8 hex digits of the file's SHA-256, which
``torch.hub.load_state_dict_from_url(..., check_hash=True)`` verifies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .config import PretrainedConfig
from .datasets import dataset_for_num_classes

MMSEG_DOWNLOAD_ROOT = "https://download.openmmlab.com/mmsegmentation/v0.5/"


class MMSegCheckpoint(NamedTuple):
    """One released mmseg checkpoint.

    The file is ``{MMSEG_DOWNLOAD_ROOT}{model}/{run}/{run}_{stamp}.pth``.
    """

    config: str  #: mmseg 1.x config name, e.g. "danet_r50-d8_4xb2-40k_cityscapes-512x1024"
    dataset: str  #: "cityscapes", "ade20k" or "voc" (VOC 2012 + SBD "aug" for training)
    crop: tuple[int, int]  #: training crop (h, w)
    iterations: int  #: training iterations
    miou: float  #: validation mIoU, single scale
    miou_ms_flip: float | None  #: mIoU with multi-scale + flip testing (None: unpublished)
    run: str  #: mmseg 0.x run name: the download folder and file name stem
    stamp: str  #: time stamp and SHA-256 prefix that end the file name
    test_crop: tuple[int, int] | None = None  #: mmseg's sliding window at test time (None: whole)
    test_stride: tuple[int, int] | None = None  #: its step
    align_corners: bool = False  #: bilinear upsampling of the logits as trained

    @property
    def model(self) -> str:
        """The model family, the config name's first word (``"danet"``)."""
        return self.config.split("_", 1)[0]

    @property
    def file_name(self) -> str:
        """The checkpoint's file name."""
        return f"{self.run}_{self.stamp}.pth"

    @property
    def url(self) -> str:
        """Where to download it."""
        return f"{MMSEG_DOWNLOAD_ROOT}{self.model}/{self.run}/{self.file_name}"

    @property
    def sha256_prefix(self) -> str:
        """The first 8 hex digits of the file's SHA-256, from its name."""
        return self.stamp.rsplit("-", 1)[1]

    @property
    def backbone(self) -> str:
        """timm's name of the backbone (``resnet50c``: mmseg's ResNetV1c-50)."""
        depth = self.config.split("_", 2)[1].split("-", 1)[0]  # "r50" in "danet_r50-d8_..."
        return f"resnet{depth[1:]}c"


# Cityscapes 769x769 models were trained with align_corners=True and tested in windows.
_SLIDE_769 = dict(test_crop=(769, 769), test_stride=(513, 513), align_corners=True)

MMSEG_CHECKPOINTS: dict[str, MMSegCheckpoint] = {
    c.config: c
    for c in (
        MMSegCheckpoint("danet_r50-d8_4xb2-40k_cityscapes-512x1024", "cityscapes", (512, 1024),
                        40_000, 78.74, None, "danet_r50-d8_512x1024_40k_cityscapes",
                        "20200605_191324-c0dbfa5f"),
        MMSegCheckpoint("danet_r101-d8_4xb2-40k_cityscapes-512x1024", "cityscapes", (512, 1024),
                        40_000, 80.52, None, "danet_r101-d8_512x1024_40k_cityscapes",
                        "20200605_200831-c57a7157"),
        MMSegCheckpoint("danet_r50-d8_4xb2-40k_cityscapes-769x769", "cityscapes", (769, 769),
                        40_000, 78.88, 80.62, "danet_r50-d8_769x769_40k_cityscapes",
                        "20200530_025703-76681c60", **_SLIDE_769),
        MMSegCheckpoint("danet_r101-d8_4xb2-40k_cityscapes-769x769", "cityscapes", (769, 769),
                        40_000, 79.88, 81.47, "danet_r101-d8_769x769_40k_cityscapes",
                        "20200530_025717-dcb7fd4e", **_SLIDE_769),
        MMSegCheckpoint("danet_r50-d8_4xb2-80k_cityscapes-512x1024", "cityscapes", (512, 1024),
                        80_000, 79.34, None, "danet_r50-d8_512x1024_80k_cityscapes",
                        "20200607_133029-2bfa2293"),
        MMSegCheckpoint("danet_r101-d8_4xb2-80k_cityscapes-512x1024", "cityscapes", (512, 1024),
                        80_000, 80.41, None, "danet_r101-d8_512x1024_80k_cityscapes",
                        "20200607_132918-955e6350"),
        MMSegCheckpoint("danet_r50-d8_4xb2-80k_cityscapes-769x769", "cityscapes", (769, 769),
                        80_000, 79.27, 80.96, "danet_r50-d8_769x769_80k_cityscapes",
                        "20200607_132954-495689b4", **_SLIDE_769),
        MMSegCheckpoint("danet_r101-d8_4xb2-80k_cityscapes-769x769", "cityscapes", (769, 769),
                        80_000, 80.47, 82.02, "danet_r101-d8_769x769_80k_cityscapes",
                        "20200607_132918-f3a929e7", **_SLIDE_769),
        MMSegCheckpoint("danet_r50-d8_4xb4-80k_ade20k-512x512", "ade20k", (512, 512),
                        80_000, 41.66, 42.90, "danet_r50-d8_512x512_80k_ade20k",
                        "20200615_015125-edb18e08"),
        MMSegCheckpoint("danet_r101-d8_4xb4-80k_ade20k-512x512", "ade20k", (512, 512),
                        80_000, 43.64, 45.19, "danet_r101-d8_512x512_80k_ade20k",
                        "20200615_015126-d0357c73"),
        MMSegCheckpoint("danet_r50-d8_4xb4-160k_ade20k-512x512", "ade20k", (512, 512),
                        160_000, 42.45, 43.25, "danet_r50-d8_512x512_160k_ade20k",
                        "20200616_082340-9cb35dcd"),
        MMSegCheckpoint("danet_r101-d8_4xb4-160k_ade20k-512x512", "ade20k", (512, 512),
                        160_000, 44.17, 45.02, "danet_r101-d8_512x512_160k_ade20k",
                        "20200616_082348-23bf12f9"),
        MMSegCheckpoint("danet_r50-d8_4xb4-20k_voc12aug-512x512", "voc", (512, 512),
                        20_000, 74.45, 75.69, "danet_r50-d8_512x512_20k_voc12aug",
                        "20200618_070026-9e9e3ab3"),
        MMSegCheckpoint("danet_r101-d8_4xb4-20k_voc12aug-512x512", "voc", (512, 512),
                        20_000, 76.02, 77.23, "danet_r101-d8_512x512_20k_voc12aug",
                        "20200618_070026-d48d23b2"),
        MMSegCheckpoint("danet_r50-d8_4xb4-40k_voc12aug-512x512", "voc", (512, 512),
                        40_000, 76.37, 77.29, "danet_r50-d8_512x512_40k_voc12aug",
                        "20200613_235526-426e3a64"),
        MMSegCheckpoint("danet_r101-d8_4xb4-40k_voc12aug-512x512", "voc", (512, 512),
                        40_000, 76.51, 77.32, "danet_r101-d8_512x512_40k_voc12aug",
                        "20200613_223031-788e232a"),
        MMSegCheckpoint("ccnet_r50-d8_4xb2-40k_cityscapes-512x1024", "cityscapes", (512, 1024),
                        40_000, 77.76, 78.87, "ccnet_r50-d8_512x1024_40k_cityscapes",
                        "20200616_142517-4123f401"),
        MMSegCheckpoint("ccnet_r101-d8_4xb2-40k_cityscapes-512x1024", "cityscapes", (512, 1024),
                        40_000, 76.35, 78.19, "ccnet_r101-d8_512x1024_40k_cityscapes",
                        "20200616_142540-a3b84ba6"),
        MMSegCheckpoint("ccnet_r50-d8_4xb2-40k_cityscapes-769x769", "cityscapes", (769, 769),
                        40_000, 78.46, 79.93, "ccnet_r50-d8_769x769_40k_cityscapes",
                        "20200616_145125-76d11884", **_SLIDE_769),
        MMSegCheckpoint("ccnet_r101-d8_4xb2-40k_cityscapes-769x769", "cityscapes", (769, 769),
                        40_000, 76.94, 78.62, "ccnet_r101-d8_769x769_40k_cityscapes",
                        "20200617_101428-4f57c8d0", **_SLIDE_769),
        MMSegCheckpoint("ccnet_r50-d8_4xb2-80k_cityscapes-512x1024", "cityscapes", (512, 1024),
                        80_000, 79.03, 80.16, "ccnet_r50-d8_512x1024_80k_cityscapes",
                        "20200617_010421-869a3423"),
        MMSegCheckpoint("ccnet_r101-d8_4xb2-80k_cityscapes-512x1024", "cityscapes", (512, 1024),
                        80_000, 78.87, 79.90, "ccnet_r101-d8_512x1024_80k_cityscapes",
                        "20200617_203935-ffae8917"),
        MMSegCheckpoint("ccnet_r50-d8_4xb2-80k_cityscapes-769x769", "cityscapes", (769, 769),
                        80_000, 79.29, 81.08, "ccnet_r50-d8_769x769_80k_cityscapes",
                        "20200617_010421-73eed8ca", **_SLIDE_769),
        MMSegCheckpoint("ccnet_r101-d8_4xb2-80k_cityscapes-769x769", "cityscapes", (769, 769),
                        80_000, 79.45, 80.66, "ccnet_r101-d8_769x769_80k_cityscapes",
                        "20200618_011502-ad3cd481", **_SLIDE_769),
        MMSegCheckpoint("ccnet_r50-d8_4xb4-80k_ade20k-512x512", "ade20k", (512, 512),
                        80_000, 41.78, 42.98, "ccnet_r50-d8_512x512_80k_ade20k",
                        "20200615_014848-aa37f61e"),
        MMSegCheckpoint("ccnet_r101-d8_4xb4-80k_ade20k-512x512", "ade20k", (512, 512),
                        80_000, 43.97, 45.13, "ccnet_r101-d8_512x512_80k_ade20k",
                        "20200615_014848-1f4929a3"),
        MMSegCheckpoint("ccnet_r50-d8_4xb4-160k_ade20k-512x512", "ade20k", (512, 512),
                        160_000, 42.08, 43.13, "ccnet_r50-d8_512x512_160k_ade20k",
                        "20200616_084435-7c97193b"),
        MMSegCheckpoint("ccnet_r101-d8_4xb4-160k_ade20k-512x512", "ade20k", (512, 512),
                        160_000, 43.71, 45.04, "ccnet_r101-d8_512x512_160k_ade20k",
                        "20200616_000644-e849e007"),
        MMSegCheckpoint("ccnet_r50-d8_4xb4-20k_voc12aug-512x512", "voc", (512, 512),
                        20_000, 76.17, 77.51, "ccnet_r50-d8_512x512_20k_voc12aug",
                        "20200617_193212-fad81784"),
        MMSegCheckpoint("ccnet_r101-d8_4xb4-20k_voc12aug-512x512", "voc", (512, 512),
                        20_000, 77.27, 79.02, "ccnet_r101-d8_512x512_20k_voc12aug",
                        "20200617_193212-0007b61d"),
        MMSegCheckpoint("ccnet_r50-d8_4xb4-40k_voc12aug-512x512", "voc", (512, 512),
                        40_000, 75.96, 77.04, "ccnet_r50-d8_512x512_40k_voc12aug",
                        "20200613_232127-c2a15f02"),
        MMSegCheckpoint("ccnet_r101-d8_4xb4-40k_voc12aug-512x512", "voc", (512, 512),
                        40_000, 77.87, 78.90, "ccnet_r101-d8_512x512_40k_voc12aug",
                        "20200613_232127-c30da577"),
    )
}  # fmt: skip


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
        RuntimeError: from ``torch.hub`` when the file's hash does not match its name.
    """
    entry = find_mmseg_checkpoint(name_or_url)
    if entry is None and "://" not in name_or_url:
        raise ValueError(
            f"unknown mmseg checkpoint {name_or_url!r}; expected a URL or one of "
            f"{sorted(MMSEG_CHECKPOINTS)}"
        )
    url = entry.url if entry is not None else name_or_url
    return torch.hub.load_state_dict_from_url(
        url, model_dir=None if model_dir is None else str(model_dir), map_location="cpu",
        progress=progress, check_hash=True, weights_only=True,
    )  # fmt: skip


def mmseg_pretrained_config(
    num_classes: int, meta: Mapping[str, Any], entry: MMSegCheckpoint | None
) -> PretrainedConfig:
    """The :class:`PretrainedConfig` of an mmseg checkpoint.

    Classes, palette and test resize come from the table entry's dataset, else from
    the dataset with ``num_classes`` classes (19: Cityscapes, 150: ADE20K, 21: VOC),
    else generic names; class names and palette saved in the checkpoint's ``meta``
    (``CLASSES``/``PALETTE`` of mmseg 0.x, ``dataset_meta`` of 1.x) take precedence.
    The sliding window is the entry's test window (whole images without an entry).

    Args:
        num_classes: the checkpoint's number of classes.
        meta: the checkpoint's ``meta`` (may be empty).
        entry: the table entry the checkpoint was recognised as, or None.
    """
    dataset = entry.dataset if entry is not None else None
    if dataset is None and (info := dataset_for_num_classes(num_classes)) is not None:
        dataset = info.name
    config = (
        PretrainedConfig.generic(num_classes)
        if dataset is None
        else PretrainedConfig.for_dataset(dataset)
    )
    if entry is not None:
        config = replace(config, crop_size=entry.test_crop, stride=entry.test_stride)
    dataset_meta = meta.get("dataset_meta")
    if not isinstance(dataset_meta, Mapping):
        dataset_meta = {}
    names = meta.get("CLASSES") or dataset_meta.get("classes")
    palette = meta.get("PALETTE") or dataset_meta.get("palette")
    if names is not None and len(names) == num_classes:
        if palette is None or len(palette) != num_classes:
            palette = config.palette
        config = replace(config, class_names=names, palette=palette)
    return config

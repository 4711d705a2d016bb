"""The meta mmseg writes into a release's checkpoint, made by mmseg's own config code.

``tests/data/mm_reference/mmseg_release_meta.json.xz`` (``generate/make_release_meta.py``):
for every release of the table, mmengine's ``Config.pretty_text`` of its mmseg 1.2.2
config (a 1.x checkpoint's ``meta["cfg"]``) and of the same settings in mmseg 0.x's
layout (a 2020-2021 release's ``meta["config"]``), and the datasets' ``METAINFO``.
"""

from __future__ import annotations

import json
import lzma
from functools import cache
from typing import Any

from tests.reference import MM_DATA_DIR

DATASET_NAMES = {"CityscapesDataset": "cityscapes", "ADE20KDataset": "ade20k",
                 "PascalVOCDataset": "voc"}  # fmt: skip


@cache
def _metas() -> dict[str, Any]:
    packed = (MM_DATA_DIR / "mmseg_release_meta.json.xz").read_bytes()
    return json.loads(lzma.decompress(packed))


def mmseg_metainfo(dataset: str) -> dict[str, Any]:
    """mmseg's ``METAINFO`` (``classes``, ``palette``) of ``"cityscapes"``, ``"ade20k"`` or
    ``"voc"``."""
    kind = next(k for k, name in DATASET_NAMES.items() if name == dataset)
    return _metas()["_datasets"][kind]


def release_dataset(config: str) -> str:
    """The dataset (our name) a release's mmseg config tests on."""
    return DATASET_NAMES[_metas()[config]["dataset"]]


def meta_0x(config: str) -> dict[str, Any]:
    """A 2020-2021 release's meta: the 0.x config text, ``CLASSES`` and ``PALETTE``."""
    info = mmseg_metainfo(release_dataset(config))
    return {"mmseg_version": "0.5.0+b2724da", "config": _metas()[config]["config"],
            "CLASSES": tuple(info["classes"]), "PALETTE": info["palette"]}  # fmt: skip


def meta_1x(config: str) -> dict[str, Any]:
    """An mmseg 1.x checkpoint's meta: ``cfg`` text and ``dataset_meta``."""
    return {"cfg": _metas()[config]["cfg"], "mmengine_version": "0.10.7",
            "dataset_meta": mmseg_metainfo(release_dataset(config))}  # fmt: skip

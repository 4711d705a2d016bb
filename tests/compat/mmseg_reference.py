"""mmseg checkpoints for tests: the fixtures' fill-rule weights, and other depths / class counts.

The fixtures (``tests/data/mm_reference``) list the keys of mmseg's DANet-R50 and
CCNet-R50 on Cityscapes (``mmseg_danet``, ``mmseg_ccnet``; ``manifest.json``) and of its
other attention heads (``mmseg_nlnet``...; ``zoo_manifest.json``) exactly as mmseg's
``state_dict()`` does, ``auxiliary_head.*`` included. ResNetV1c-101 differs only in the
number of ``layer3`` blocks (23 instead of 6), so its key list is the fixture's with
blocks 6..22 added after block 5's pattern: mmseg-named keys made without this
package's mapping. Every helper takes the fixture's name (default: DANet's).
"""

from __future__ import annotations

import json
import re
from functools import cache

import torch
from torch import Tensor

from tests.reference import MM_DATA_DIR, fill_rule, load_arrays, manifest

CLASSIFIERS = ("decode_head.conv_seg.", "decode_head.pam_conv_seg.",
               "decode_head.cam_conv_seg.", "auxiliary_head.conv_seg.")  # fmt: skip
# The released files' meta (mmseg 0.x): strings, the config text, class names and palette.
META = {"mmseg_version": "0.5.0+b2724da", "config": "model = dict(type='EncoderDecoder')",
        "CLASSES": ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                    "truck", "bus", "train", "motorcycle", "bicycle"),
        "iter": 80000}  # fmt: skip


DANET, CCNET = "mmseg_danet", "mmseg_ccnet"  # the fixtures' names


def fixture_config(name: str = DANET) -> dict:
    """An mmseg fixture's manifest entry (configuration, seed, keys): ``manifest.json``'s,
    else ``zoo_manifest.json``'s (the other attention heads)."""
    entries = manifest(MM_DATA_DIR)
    return entries[name] if name in entries else zoo_manifest()[name]


@cache
def zoo_manifest() -> dict:
    """The zoo fixtures' manifest (``mmseg_nlnet``...): config, head settings, seed, keys."""
    return json.loads((MM_DATA_DIR / "zoo_manifest.json").read_text())


def fixture_arrays(name: str = DANET) -> dict[str, Tensor]:
    """An mmseg fixture's input and outputs."""
    return load_arrays(name, MM_DATA_DIR)


@cache
def _fixture_state_dict(name: str) -> dict[str, Tensor]:
    entry = fixture_config(name)
    return fill_rule(entry["keys"], entry["weights_seed"])


def fixture_state_dict(name: str = DANET) -> dict[str, Tensor]:
    """The fixture's weights by its fill rule, mmseg key names, ``auxiliary_head.*`` included.

    A new dict each call (the tensors are shared: do not change them in place).
    """
    return dict(_fixture_state_dict(name))


def fixture_checkpoint(name: str = DANET) -> dict:
    """The fixture's weights wrapped as mmseg releases them: ``{"meta", "state_dict"}``."""
    return {"meta": dict(META), "state_dict": fixture_state_dict(name)}


def mmseg_keys(name: str = DANET, layer3_blocks: int = 6, num_classes: int = 19) -> list:
    """``[key, shape]`` of fixture ``name``'s segmentor with ``layer3_blocks`` blocks in
    layer3 (23: R-101) and ``num_classes`` classes."""
    keys = []
    entry = fixture_config(name)
    block5 = [(k, s) for k, s in entry["keys"] if k.startswith("backbone.layer3.5.")]
    for key, shape in entry["keys"]:
        if key.startswith(CLASSIFIERS) and shape:
            shape = [num_classes, *shape[1:]]
        keys.append([key, shape])
        if key == block5[-1][0]:  # after the last key of layer3.5: blocks 6.. as copies of it
            for block in range(6, layer3_blocks):
                keys += [[re.sub(r"layer3\.5\.", f"layer3.{block}.", k), s] for k, s in block5]
    return keys


def mmseg_state_dict(
    name: str = DANET, layer3_blocks: int = 6, num_classes: int = 19
) -> dict[str, Tensor]:
    """Random weights for :func:`mmseg_keys` (distinct values, for checking where they land).

    Drawn with torch (seed 0), faster than the fill rule for the 43M weights of R-101.
    """
    generator = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=generator)
            for key, shape in mmseg_keys(name, layer3_blocks, num_classes)}  # fmt: skip

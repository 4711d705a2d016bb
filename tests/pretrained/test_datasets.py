"""Class names and palettes of Cityscapes, ADE20K and PASCAL VOC: mmseg's, exactly."""

import pytest

from attnblocks.pretrained import DATASETS, bit_palette, dataset_for_num_classes
from tests.pretrained.mmseg_meta import mmseg_metainfo


def test_voc_colour_map_has_the_published_colours():
    palette = bit_palette(256)
    # VOC's SegmentationClass PNG colours: background, aeroplane, person, tvmonitor, void (255)
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 15: (192, 128, 128), 20: (0, 64, 128),
                255: (224, 224, 192)}  # fmt: skip
    assert {index: palette[index] for index in expected} == expected
    assert len(set(palette)) == 256


@pytest.mark.parametrize("name", ["cityscapes", "ade20k", "voc"])
def test_names_and_colours_are_mmsegs(name):
    # mmseg 1.2.2's METAINFO, written by generate/make_release_meta.py from its dataset classes
    info, mmseg = DATASETS[name], mmseg_metainfo(name)
    assert info.classes == tuple(mmseg["classes"])  # ADE20K's "bed " keeps its space
    assert info.palette == tuple(tuple(colour) for colour in mmseg["palette"])


@pytest.mark.parametrize("name, count, first, last", [
    ("cityscapes", 19, "road", "bicycle"), ("ade20k", 150, "wall", "flag"),
    ("voc", 21, "background", "tvmonitor"),
])  # fmt: skip
def test_datasets(name, count, first, last):
    info = DATASETS[name]
    assert len(info.classes) == len(set(info.classes)) == count
    assert (info.classes[0], info.classes[-1]) == (first, last)
    assert len(info.palette) == count
    assert dataset_for_num_classes(count) is info


def test_ade20k_palette_is_not_a_bit_palette():
    # the scaffold coloured ADE20K with VOC's bit map; mmseg's first colours are greys and pinks
    assert DATASETS["ade20k"].palette[:3] == ((120, 120, 120), (180, 120, 120), (6, 230, 230))


def test_cityscapes_colours_are_the_official_ones():
    info = DATASETS["cityscapes"]
    colours = dict(zip(info.classes, info.palette))
    assert colours["road"] == (128, 64, 128) and colours["car"] == (0, 0, 142)
    assert colours["vegetation"] == (107, 142, 35) and colours["sky"] == (70, 130, 180)


def test_unknown_class_count():
    assert dataset_for_num_classes(7) is None

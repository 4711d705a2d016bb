"""Class names and palettes of Cityscapes, ADE20K and PASCAL VOC."""

import pytest

from attnblocks.pretrained import DATASETS, bit_palette, dataset_for_num_classes


def test_voc_colour_map_has_the_published_colours():
    palette = bit_palette(256)
    # VOC's SegmentationClass PNG colours: background, aeroplane, person, tvmonitor, void (255)
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 15: (192, 128, 128), 20: (0, 64, 128),
                255: (224, 224, 192)}  # fmt: skip
    assert {index: palette[index] for index in expected} == expected
    assert len(set(palette)) == 256


@pytest.mark.parametrize("name, count, first, last", [
    ("cityscapes", 19, "road", "bicycle"), ("ade20k", 150, "wall", "flag"),
    ("voc", 21, "background", "tvmonitor"),
])  # fmt: skip
def test_datasets(name, count, first, last):
    info = DATASETS[name]
    assert len(info.classes) == len(set(info.classes)) == count
    assert (info.classes[0], info.classes[-1]) == (first, last)
    assert len(info.palette) == len(set(info.palette)) == count  # one distinct colour per class
    assert dataset_for_num_classes(count) is info


def test_cityscapes_colours_are_the_official_ones():
    info = DATASETS["cityscapes"]
    colours = dict(zip(info.classes, info.palette))
    assert colours["road"] == (128, 64, 128) and colours["car"] == (0, 0, 142)
    assert colours["vegetation"] == (107, 142, 35) and colours["sky"] == (70, 130, 180)


def test_unknown_class_count():
    assert dataset_for_num_classes(7) is None

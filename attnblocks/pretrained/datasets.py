"""Class names, colour palettes and test image sizes of the datasets pretrained models know.

Cityscapes (19 evaluated classes, indexed by train id, with the official colours of
cityscapesScripts), ADE20K SceneParsing (150 classes) and PASCAL VOC 2012 (21 classes,
background first, with VOC's own colour map).
"""

from __future__ import annotations

from typing import NamedTuple

Colour = tuple[int, int, int]

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

CITYSCAPES_PALETTE: tuple[Colour, ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

# ADE20K SceneParsing: annotation values 1..150 become classes 0..149 (0 = "other" is void)
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def bit_palette(num_colours: int) -> tuple[Colour, ...]:
    """PASCAL VOC's colour map: index ``i``'s bits spread over R, G, B, highest bits first.

    Colour 0 is black, 1 dark red, 2 dark green...; neighbouring indices differ clearly.

    Args:
        num_colours: how many colours (at most 256 distinct ones).
    """
    colours = []
    for index in range(num_colours):
        rgb = [0, 0, 0]
        for bit in range(8):  # index bit 3*bit + channel becomes bit 7 - bit of that channel
            for channel in range(3):
                rgb[channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
        colours.append((rgb[0], rgb[1], rgb[2]))
    return tuple(colours)


class DatasetInfo(NamedTuple):
    """What a model trained on a dataset needs to label a new image."""

    name: str  #: short name: "cityscapes", "ade20k", "voc"
    classes: tuple[str, ...]  #: class names, indexed by label
    palette: tuple[Colour, ...]  #: one RGB colour per class
    image_scale: tuple[int, int]  #: (long, short) edge bounds of mmseg's test resize


DATASETS: dict[str, DatasetInfo] = {
    "cityscapes": DatasetInfo("cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, (2048, 1024)),
    # ADE20K's classes are all things, none is "background": skip the VOC map's black
    "ade20k": DatasetInfo("ade20k", ADE20K_CLASSES, bit_palette(151)[1:], (2048, 512)),
    "voc": DatasetInfo("voc", VOC_CLASSES, bit_palette(21), (2048, 512)),
}


def dataset_for_num_classes(num_classes: int) -> DatasetInfo | None:
    """The dataset among :data:`DATASETS` with ``num_classes`` classes, or None."""
    return next((d for d in DATASETS.values() if len(d.classes) == num_classes), None)

"""Readers for the standard folder layouts of Cityscapes, ADE20K and PASCAL VOC 2012.

Each reader is a :class:`torch.utils.data.Dataset` whose items are ``(image, label)``:

- ``image``: ``uint8`` tensor ``(3, H, W)``, RGB;
- ``label``: ``int64`` tensor ``(H, W)`` of train ids ``0 .. num_classes - 1``, with
  ``ignore_index = 255`` for pixels that are not scored.

Images are decoded with Pillow. No augmentation happens here: the training script passes its
own ``transform(image, label) -> (image, label)``. Files are listed in sorted order, so the
order is the same on every machine. Missing folders and files are reported when the dataset is
built; unreadable images, label values outside the dataset's range and image/label size
mismatches are reported when the item is read.

Layouts (``root`` is what the caller passes):

- Cityscapes: ``root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` and
  ``root/gtFine/<split>/<city>/<name>_gtFine_labelIds.png``.
- ADE20K (SceneParsing 2016): ``root/ADEChallengeData2016/images/{training,validation}/*.jpg``
  and ``.../annotations/{training,validation}/*.png``; ``root`` may also be the
  ``ADEChallengeData2016`` folder itself.
- VOC 2012: ``root/VOCdevkit/VOC2012``, ``root/VOC2012`` or ``root`` itself, holding
  ``ImageSets/Segmentation/<split>.txt``, ``JPEGImages/<id>.jpg`` and
  ``SegmentationClass/<id>.png``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Optional, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from attnblocks.pretrained import DATASETS, PretrainedConfig, bit_palette
from attnblocks.pretrained.datasets import ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES, Colour

Transform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
PathLike = Union[str, Path]
# one sample: the image file and its label file (None: no label, every pixel is ignored)
Sample = tuple[Path, Optional[Path]]

__all__ = [
    "DATASET_NAMES",
    "ADE20KSegmentation",
    "CityscapesSegmentation",
    "VOCSegmentation",
    "build_dataset",
    "dataset_palette",
    "labels_config",
]

IGNORE_INDEX = 255
# how many offending label values an error message lists before it cuts the list short
_MAX_VALUES_SHOWN = 10


def _check_split(dataset: str, split: str, valid: tuple[str, ...]) -> str:
    """Return ``split`` if it is one of ``valid``, else raise a ValueError naming the choices.

    Args:
        dataset: the dataset's name, for the message.
        split: the split a caller asked for.
        valid: the splits the dataset has.
    """
    if split not in valid:
        choices = ", ".join(repr(name) for name in valid)
        raise ValueError(f"unknown {dataset} split {split!r}; expected one of {choices}")
    return split


def _require_dir(path: Path, layout: str) -> Path:
    """Return ``path`` if it is a folder, else raise a FileNotFoundError that shows the layout.

    Args:
        path: the folder the layout needs.
        layout: the expected folder layout, for the message.
    """
    if not path.is_dir():
        raise FileNotFoundError(f"expected the folder {path}, which does not exist; {layout}")
    return path


def _lookup_table(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry table from 8-bit label values to train ids; -1 marks values never valid.

    Args:
        mapping: raw label value -> train id (or ``IGNORE_INDEX``), for every valid raw value.
    """
    table = np.full(256, -1, dtype=np.int64)
    for raw, train_id in mapping.items():
        table[raw] = train_id
    return table


def _describe_values(values: np.ndarray) -> str:
    """The sorted distinct ``values`` as text, cut short after ``_MAX_VALUES_SHOWN`` of them."""
    distinct = np.unique(values)
    shown = ", ".join(str(int(v)) for v in distinct[:_MAX_VALUES_SHOWN])
    if len(distinct) > _MAX_VALUES_SHOWN:
        shown += f", ... ({len(distinct)} distinct values)"
    return shown


def _describe_ranges(values: np.ndarray) -> str:
    """Sorted ints as compact text: ``[0, 1, 2, 5, 255]`` -> ``"0..2, 5, 255"``."""
    parts: list[str] = []
    start = previous = int(values[0])
    for value in (int(v) for v in values[1:]):
        if value == previous + 1:
            previous = value
            continue
        parts.append(f"{start}..{previous}" if previous > start else str(start))
        start = previous = value
    parts.append(f"{start}..{previous}" if previous > start else str(start))
    return ", ".join(parts)


def _open_image(path: Path, mode: str | None) -> Image.Image:
    """Decode the image file at ``path`` fully, converted to ``mode`` (None: keep its own mode).

    Args:
        path: the image file.
        mode: the Pillow mode to convert to, e.g. ``"RGB"``.

    Returns:
        The decoded image.

    Raises:
        FileNotFoundError: the file disappeared since the dataset was listed.
        ValueError: Pillow could not read the file (not an image, truncated, corrupt).
    """
    try:
        with Image.open(path) as image:
            # load() inside the with-block decodes the pixels before the file is closed
            image.load()
            return image.convert(mode) if mode is not None else image.copy()
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        # Pillow reports corrupt files as OSError, and a few of its plugins as SyntaxError
        raise ValueError(f"cannot read the image file {path}: {err}") from err


class _FolderSegmentation(Dataset):
    """Shared reading of ``(image, label)`` pairs from a list of files.

    Subclasses list their files into ``samples``, and set ``CLASSES`` and ``_LABEL_TABLE``
    (raw 8-bit label value -> train id, -1 for values that must not occur).
    """

    CLASSES: tuple[str, ...] = ()
    NUM_CLASSES: int = 0
    ignore_index: int = IGNORE_INDEX
    _LABEL_TABLE: np.ndarray = np.full(256, -1, dtype=np.int64)
    # Pillow modes whose pixels are the raw label values themselves
    _LABEL_MODES: tuple[str, ...] = ("L", "P")
    _LABEL_FORMAT = "a single-channel 8-bit PNG of label values"

    def __init__(self, samples: list[Sample], transform: Transform | None) -> None:
        """Store the listed files and the transform.

        Args:
            samples: ``(image file, label file or None)`` pairs, in the dataset's order.
            transform: applied as ``transform(image, label)`` to every item, or None.
        """
        if transform is not None and not callable(transform):
            raise TypeError(
                "transform must be a callable (image, label) -> (image, label) or None, "
                f"got {type(transform).__name__}"
            )
        self.samples = samples
        self.transform = transform

    @property
    def num_classes(self) -> int:
        """Number of classes scored, i.e. train ids ``0 .. num_classes - 1``."""
        return self.NUM_CLASSES

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, indexed by train id."""
        return self.CLASSES

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Read the ``index``-th image and its label.

        Args:
            index: position in the sorted list of samples.

        Returns:
            ``(image, label)``: ``uint8 (3, H, W)`` RGB and ``int64 (H, W)`` train ids with
            255 = ignore, after ``transform`` if one was given.
        """
        image_path, label_path = self.samples[index]
        image = _open_image(image_path, "RGB")
        height, width = image.height, image.width
        if label_path is None:
            label = np.full((height, width), IGNORE_INDEX, dtype=np.int64)
        else:
            label = self._read_label(label_path, image_path, (height, width))
        # np.array (not asarray) copies into a writable array, which torch.from_numpy wants
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
        image_tensor = pixels.permute(2, 0, 1).contiguous()
        label_tensor = torch.from_numpy(label)
        if self.transform is not None:
            return self.transform(image_tensor, label_tensor)
        return image_tensor, label_tensor

    def _read_label(
        self, label_path: Path, image_path: Path, image_size: tuple[int, int]
    ) -> np.ndarray:
        """Decode a label file and map its raw values to train ids.

        Args:
            label_path: the label file.
            image_path: its image, for the messages.
            image_size: the image's ``(H, W)``, which the label must match.

        Returns:
            ``int64 (H, W)`` train ids, 255 = ignore.
        """
        label_image = _open_image(label_path, None)
        if label_image.mode not in self._LABEL_MODES:
            raise ValueError(
                f"label file {label_path} must be {self._LABEL_FORMAT} (Pillow mode "
                f"{' or '.join(repr(m) for m in self._LABEL_MODES)}), got mode "
                f"{label_image.mode!r}"
            )
        label_size = (label_image.height, label_image.width)
        if label_size != image_size:
            raise ValueError(
                f"image and label sizes differ: image {image_path} is "
                f"{image_size[0]} x {image_size[1]} (H x W) but label {label_path} is "
                f"{label_size[0]} x {label_size[1]}"
            )
        # mode "P" gives palette indices and "L" gray levels: in both, the raw label values
        raw = np.array(label_image, dtype=np.uint8)
        train_ids = self._LABEL_TABLE[raw]
        invalid = train_ids < 0
        if invalid.any():
            raise ValueError(
                f"label file {label_path} holds values outside the valid range "
                f"({self._valid_range_text()}): {_describe_values(raw[invalid])}"
            )
        return train_ids

    def to_label_file_values(self, train_ids: np.ndarray) -> np.ndarray:
        """Train ids back to the values this dataset's label files hold (Cityscapes label ids,
        ADE20K 1..150, VOC class indices): the format its benchmark servers take.

        Args:
            train_ids: integer array of train ids ``0 .. num_classes - 1``.

        Returns:
            ``uint8`` array of the same shape.
        """
        file_values = np.zeros(self.NUM_CLASSES, dtype=np.uint8)
        for raw, train_id in enumerate(self._LABEL_TABLE):
            if 0 <= train_id < self.NUM_CLASSES:
                file_values[train_id] = raw  # one raw value per train id in every dataset here
        return file_values[np.asarray(train_ids)]

    def _valid_range_text(self) -> str:
        """The raw label values this dataset accepts, as text for error messages."""
        valid = np.flatnonzero(self._LABEL_TABLE >= 0)
        return f"expected {_describe_ranges(valid)}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={getattr(self, 'split', None)!r}, "
            f"samples={len(self)}, num_classes={self.num_classes})"
        )


# ---------------------------------------------------------------------------- Cityscapes

_CITYSCAPES_LAYOUT = (
    "the Cityscapes layout is root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png with "
    "root/gtFine/<split>/<city>/<name>_gtFine_labelIds.png"
)
# official Cityscapes labelId -> trainId for the 19 evaluated classes; all other ids are ignored
_CITYSCAPES_TRAIN_IDS = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}


class CityscapesSegmentation(_FolderSegmentation):
    """Cityscapes fine annotations, 19 classes (labelIds mapped to the official train ids).

    Label ids 0..33 are valid; the 15 ids not evaluated and the license plate (id -1, stored
    as 255 in 8-bit label files) become 255 = ignore. Test images have no public labels: where
    a test label file is absent, the item's label is all 255.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: applied as ``transform(image, label)`` to every item, or None.

    Attributes:
        samples: ``(image file, label file or None)`` pairs, sorted by city and name.
        num_classes: 19.
        ignore_index: 255.
        classes: the 19 class names, indexed by train id.
    """

    SPLITS = ("train", "val", "test")
    CLASSES = CITYSCAPES_CLASSES
    NUM_CLASSES = 19
    IMAGE_SUFFIX = "_leftImg8bit.png"
    LABEL_SUFFIX = "_gtFine_labelIds.png"
    _LABEL_TABLE = _lookup_table(
        {
            # ids 0..33 that are not evaluated, and the license plate's 255, are ignored
            **dict.fromkeys(range(34), IGNORE_INDEX),
            IGNORE_INDEX: IGNORE_INDEX,
            **_CITYSCAPES_TRAIN_IDS,
        }
    )

    def __init__(
        self, root: PathLike, split: str = "train", transform: Transform | None = None
    ) -> None:
        self.split = _check_split("Cityscapes", split, self.SPLITS)
        self.root = Path(root)
        _require_dir(self.root, _CITYSCAPES_LAYOUT)
        image_dir = _require_dir(self.root / "leftImg8bit" / split, _CITYSCAPES_LAYOUT)
        label_dir = self.root / "gtFine" / split
        if split != "test":
            _require_dir(label_dir, _CITYSCAPES_LAYOUT)
        image_paths = sorted(image_dir.glob(f"*/*{self.IMAGE_SUFFIX}"))
        if not image_paths:
            raise FileNotFoundError(
                f"no images *{self.IMAGE_SUFFIX} found in the city folders of {image_dir}; "
                f"{_CITYSCAPES_LAYOUT}"
            )
        samples: list[Sample] = []
        for image_path in image_paths:
            name = image_path.name[: -len(self.IMAGE_SUFFIX)]
            label_path = label_dir / image_path.parent.name / f"{name}{self.LABEL_SUFFIX}"
            if not label_path.is_file():
                if split == "test":
                    # test labels are not public: score nothing rather than fail
                    samples.append((image_path, None))
                    continue
                raise FileNotFoundError(f"image {image_path} has no label: expected {label_path}")
            samples.append((image_path, label_path))
        super().__init__(samples, transform)


# ---------------------------------------------------------------------------- ADE20K

_ADE20K_FOLDER = "ADEChallengeData2016"
_ADE20K_LAYOUT = (
    f"the ADE20K layout is root/{_ADE20K_FOLDER}/images/{{training,validation}}/*.jpg with "
    f"root/{_ADE20K_FOLDER}/annotations/{{training,validation}}/*.png (root may also be the "
    f"{_ADE20K_FOLDER} folder itself)"
)


class ADE20KSegmentation(_FolderSegmentation):
    """ADE20K SceneParsing (ADEChallengeData2016), 150 classes.

    Annotation value 0 ("other") becomes 255 = ignore and values 1..150 become train ids
    0..149.

    Args:
        root: the folder holding ``ADEChallengeData2016/``, or that folder itself.
        split: ``"train"`` (``training/``) or ``"val"`` (``validation/``).
        transform: applied as ``transform(image, label)`` to every item, or None.

    Attributes:
        samples: ``(image file, label file)`` pairs, sorted by file name.
        num_classes: 150.
        ignore_index: 255.
        classes: the 150 class names, indexed by train id.
    """

    SPLITS = ("train", "val")
    SPLIT_FOLDERS: ClassVar[dict[str, str]] = {"train": "training", "val": "validation"}
    CLASSES = ADE20K_CLASSES  # in the order of their annotation values 1..150
    NUM_CLASSES = 150
    _LABEL_TABLE = _lookup_table({0: IGNORE_INDEX, **{v: v - 1 for v in range(1, 151)}})

    def __init__(
        self, root: PathLike, split: str = "train", transform: Transform | None = None
    ) -> None:
        self.split = _check_split("ADE20K", split, self.SPLITS)
        self.root = Path(root)
        base = self._find_base(self.root)
        folder = self.SPLIT_FOLDERS[split]
        image_dir = _require_dir(base / "images" / folder, _ADE20K_LAYOUT)
        label_dir = _require_dir(base / "annotations" / folder, _ADE20K_LAYOUT)
        image_paths = sorted(image_dir.glob("*.jpg"))
        if not image_paths:
            raise FileNotFoundError(f"no images *.jpg found in {image_dir}; {_ADE20K_LAYOUT}")
        samples: list[Sample] = []
        for image_path in image_paths:
            label_path = label_dir / f"{image_path.stem}.png"
            if not label_path.is_file():
                raise FileNotFoundError(f"image {image_path} has no label: expected {label_path}")
            samples.append((image_path, label_path))
        super().__init__(samples, transform)

    @staticmethod
    def _find_base(root: Path) -> Path:
        """The ``ADEChallengeData2016`` folder: ``root/ADEChallengeData2016`` or ``root``."""
        _require_dir(root, _ADE20K_LAYOUT)
        if (root / _ADE20K_FOLDER).is_dir():
            return root / _ADE20K_FOLDER
        if (root / "images").is_dir() and (root / "annotations").is_dir():
            return root
        raise FileNotFoundError(
            f"found neither {root / _ADE20K_FOLDER} nor images/ and annotations/ folders "
            f"directly in {root}; {_ADE20K_LAYOUT}"
        )


# ---------------------------------------------------------------------------- PASCAL VOC

_VOC_LAYOUT = (
    "the VOC layout is root/VOCdevkit/VOC2012, root/VOC2012 or root itself, holding "
    "ImageSets/Segmentation/<split>.txt, JPEGImages/<id>.jpg and SegmentationClass/<id>.png"
)


class VOCSegmentation(_FolderSegmentation):
    """PASCAL VOC 2012 segmentation, 21 classes (background + 20 objects).

    Labels are the palette indices of the ``SegmentationClass`` PNGs: 0..20 are classes and
    255 is the ignored border around objects.

    Args:
        root: the folder holding ``VOCdevkit/VOC2012/`` or ``VOC2012/``, or the ``VOC2012``
            folder itself.
        split: ``"train"``, ``"val"`` or ``"trainval"``.
        transform: applied as ``transform(image, label)`` to every item, or None.

    Attributes:
        samples: ``(image file, label file)`` pairs, sorted by image id.
        num_classes: 21.
        ignore_index: 255.
        classes: the 21 class names, indexed by train id.
    """

    SPLITS = ("train", "val", "trainval")
    CLASSES = VOC_CLASSES
    NUM_CLASSES = 21
    _LABEL_TABLE = _lookup_table({**{v: v for v in range(21)}, IGNORE_INDEX: IGNORE_INDEX})
    _LABEL_FORMAT = "a palette PNG of class indices"

    def __init__(
        self, root: PathLike, split: str = "train", transform: Transform | None = None
    ) -> None:
        self.split = _check_split("VOC", split, self.SPLITS)
        self.root = Path(root)
        base = self._find_base(self.root)
        split_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(
                f"expected the split file {split_file}, which does not exist; {_VOC_LAYOUT}"
            )
        image_ids = sorted(line.strip() for line in split_file.read_text().splitlines())
        image_ids = [image_id for image_id in image_ids if image_id]
        if not image_ids:
            raise FileNotFoundError(f"no image ids listed in the split file {split_file}")
        image_dir = _require_dir(base / "JPEGImages", _VOC_LAYOUT)
        label_dir = _require_dir(base / "SegmentationClass", _VOC_LAYOUT)
        samples: list[Sample] = []
        for image_id in image_ids:
            image_path = image_dir / f"{image_id}.jpg"
            label_path = label_dir / f"{image_id}.png"
            if not image_path.is_file():
                raise FileNotFoundError(
                    f"image {image_path}, listed in {split_file}, does not exist"
                )
            if not label_path.is_file():
                raise FileNotFoundError(f"image {image_path} has no label: expected {label_path}")
            samples.append((image_path, label_path))
        super().__init__(samples, transform)

    @staticmethod
    def _find_base(root: Path) -> Path:
        """The ``VOC2012`` folder: ``root/VOCdevkit/VOC2012``, ``root/VOC2012`` or ``root``."""
        _require_dir(root, _VOC_LAYOUT)
        for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
            if (candidate / "ImageSets" / "Segmentation").is_dir():
                return candidate
        raise FileNotFoundError(
            f"found no ImageSets/Segmentation folder in {root / 'VOCdevkit' / 'VOC2012'}, "
            f"{root / 'VOC2012'} or {root}; {_VOC_LAYOUT}"
        )


# ---------------------------------------------------------------------------- factory

_DATASETS: dict[str, type[_FolderSegmentation]] = {
    "cityscapes": CityscapesSegmentation,
    "ade20k": ADE20KSegmentation,
    "voc": VOCSegmentation,
}
DATASET_NAMES = tuple(_DATASETS)


def build_dataset(
    name: str, root: PathLike, split: str, transform: Transform | None = None
) -> Dataset:
    """Build the reader for one of the datasets by name.

    Args:
        name: ``"cityscapes"``, ``"ade20k"`` or ``"voc"``.
        root: the dataset's root folder (see each reader for the layout).
        split: the split to read, e.g. ``"train"`` or ``"val"``.
        transform: applied as ``transform(image, label)`` to every item, or None.

    Returns:
        The dataset, with ``num_classes``, ``ignore_index`` and ``classes``.
    """
    if name not in _DATASETS:
        choices = ", ".join(repr(valid) for valid in DATASET_NAMES)
        raise ValueError(f"unknown dataset {name!r}; expected one of {choices}")
    return _DATASETS[name](root, split=split, transform=transform)


# ---------------------------------------------------------------------------- colours

#: Colour of void (ignored) pixels in pictures: PASCAL VOC's, light grey-beige.
VOID_COLOUR: Colour = (224, 224, 192)


def dataset_palette(dataset: str | None, num_classes: int) -> tuple[Colour, ...]:
    """The one palette of a dataset, used by every picture the examples draw.

    Cityscapes, ADE20K and VOC get their palettes from ``attnblocks.pretrained.DATASETS``
    (Cityscapes' official colours, the others' colour maps), as pretrained models do;
    the synthetic scenes and anything else PASCAL VOC's bit colour map
    (``attnblocks.pretrained.bit_palette``: class 0 black, then dark red, dark green...).

    Args:
        dataset: the dataset's name (``"cityscapes"``, ``"synthetic"``...), or None.
        num_classes: how many classes the palette colours.
    """
    info = DATASETS.get(dataset) if dataset is not None else None
    if info is not None and len(info.palette) == num_classes:
        return info.palette
    return bit_palette(num_classes)


def labels_config(dataset: str | None, classes: tuple[str, ...]) -> PretrainedConfig:
    """Class names and :func:`dataset_palette` colours of a model trained on ``dataset``.

    Args:
        dataset: the training set's name, or None.
        classes: its class names, indexed by label.
    """
    return PretrainedConfig(
        class_names=classes, palette=dataset_palette(dataset, len(classes)),
        dataset=dataset if dataset in DATASETS else None,
    )  # fmt: skip

"""Tests for the dataset readers of the examples, on tiny fake folder trees written with Pillow."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from examples.datasets import (
    DATASET_NAMES,
    ADE20KSegmentation,
    CityscapesSegmentation,
    VOCSegmentation,
    build_dataset,
)

H, W = 8, 12
# the official Cityscapes labelId -> trainId of the 19 evaluated classes, written out again here
# so the test does not reuse the module's table
CITYSCAPES_EXPECTED = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def write_rgb(path: Path, color: tuple[int, int, int] = (10, 120, 230), size=(H, W)) -> None:
    """Write a solid-color RGB image (JPEG or PNG by the file's suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size[1], size[0]), color).save(path)


def write_gray(path: Path, values: np.ndarray) -> None:
    """Write an 8-bit single-channel PNG holding ``values``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def write_palette(path: Path, indices: np.ndarray) -> None:
    """Write a palette PNG whose pixel indices are ``indices``, with a VOC-like palette."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(indices.astype(np.uint8), mode="L").convert("P")
    # Pillow's L -> P conversion keeps the gray level as the index; give it a colorful palette
    palette = [(i * 37) % 256 for i in range(256 * 3)]
    image.putpalette(palette)
    image.save(path)


def label_map(fill: int, pixels: dict[tuple[int, int], int] | None = None) -> np.ndarray:
    """An ``(H, W)`` label array filled with ``fill`` and the given ``(row, col): value``s."""
    values = np.full((H, W), fill, dtype=np.uint8)
    for (row, col), value in (pixels or {}).items():
        values[row, col] = value
    return values


def message_with(*parts: object) -> str:
    """A regex that matches a message containing every part, in order."""
    return ".*".join(re.escape(str(part)) for part in parts)


# ---------------------------------------------------------------------------- Cityscapes


def cityscapes_pair(root: Path, split: str, city: str, name: str, labels=None) -> Path:
    """Write one Cityscapes image (PNG) and, when ``labels`` is given, its labelIds file."""
    image = root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png"
    write_rgb(image)
    (root / "gtFine" / split).mkdir(parents=True, exist_ok=True)
    if labels is not None:
        write_gray(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", labels)
    return image


def test_cityscapes_items_have_the_documented_shapes_and_dtypes(tmp_path):
    cityscapes_pair(tmp_path, "train", "aachen", "aachen_000000_000019", label_map(7))
    dataset = CityscapesSegmentation(tmp_path, split="train")
    image, label = dataset[0]
    assert len(dataset) == 1
    assert image.dtype == torch.uint8 and image.shape == (3, H, W)
    assert label.dtype == torch.int64 and label.shape == (H, W)
    # RGB order kept: channel 0 is red
    assert image[:, 0, 0].tolist() == [10, 120, 230]
    assert dataset.num_classes == 19 and len(dataset.classes) == 19
    assert dataset.ignore_index == 255
    assert dataset.classes[13] == "car" and dataset.classes == CityscapesSegmentation.CLASSES


def test_cityscapes_maps_every_label_id_to_the_official_train_id(tmp_path):
    # one pixel per label id 0..33 plus the license plate's 255, the rest road (7)
    ids = [*range(34), 255]
    pixels = {divmod(i, W): label_id for i, label_id in enumerate(ids)}
    cityscapes_pair(tmp_path, "val", "lindau", "lindau_000000_000019", label_map(7, pixels))
    _, label = CityscapesSegmentation(tmp_path, split="val")[0]
    for i, label_id in enumerate(ids):
        assert label[divmod(i, W)].item() == CITYSCAPES_EXPECTED.get(label_id, 255), label_id
    assert label[H - 1, W - 1].item() == 0  # road
    assert label[0, 7].item() == 0 and label[2, 2].item() == 13  # ids 7 (road) and 26 (car)
    assert label[0, 0].item() == 255  # id 0, unlabeled


@pytest.mark.parametrize("bad_id", [34, 100])
def test_cityscapes_rejects_label_ids_outside_0_to_33(tmp_path, bad_id):
    labels = label_map(7, {(3, 4): bad_id})
    cityscapes_pair(tmp_path, "train", "aachen", "aachen_000000_000019", labels)
    dataset = CityscapesSegmentation(tmp_path, split="train")
    with pytest.raises(ValueError, match=message_with("aachen_000000_000019_gtFine", bad_id)):
        dataset[0]


def test_cityscapes_lists_files_sorted_by_city_and_name(tmp_path):
    # written out of order on purpose
    for city, name in [("zurich", "zurich_000001"), ("aachen", "aachen_000002"),
                       ("zurich", "zurich_000000"), ("aachen", "aachen_000001")]:  # fmt: skip
        cityscapes_pair(tmp_path, "train", city, name, label_map(7))
    dataset = CityscapesSegmentation(tmp_path)
    names = [image.name for image, _ in dataset.samples]
    assert names == [
        "aachen_000001_leftImg8bit.png",
        "aachen_000002_leftImg8bit.png",
        "zurich_000000_leftImg8bit.png",
        "zurich_000001_leftImg8bit.png",
    ]


@pytest.mark.parametrize("with_gtfine_folder", [True, False])
def test_cityscapes_test_split_without_labels_gives_all_ignore(tmp_path, with_gtfine_folder):
    cityscapes_pair(tmp_path, "test", "berlin", "berlin_000000_000019")
    if not with_gtfine_folder:
        (tmp_path / "gtFine" / "test").rmdir()
    image, label = CityscapesSegmentation(tmp_path, split="test")[0]
    assert image.shape == (3, H, W)
    assert label.dtype == torch.int64 and label.shape == (H, W)
    assert (label == 255).all()


def test_cityscapes_test_split_reads_labels_when_present(tmp_path):
    cityscapes_pair(tmp_path, "test", "berlin", "berlin_000000_000019", label_map(26))
    _, label = CityscapesSegmentation(tmp_path, split="test")[0]
    assert (label == 13).all()


def test_cityscapes_missing_split_folder_names_the_expected_path(tmp_path):
    cityscapes_pair(tmp_path, "train", "aachen", "aachen_000000_000019", label_map(7))
    expected = tmp_path / "leftImg8bit" / "val"
    with pytest.raises(FileNotFoundError, match=message_with(expected, "leftImg8bit/<split>")):
        CityscapesSegmentation(tmp_path, split="val")


def test_cityscapes_missing_gtfine_folder_names_the_expected_path(tmp_path):
    write_rgb(tmp_path / "leftImg8bit" / "train" / "aachen" / "aachen_0_leftImg8bit.png")
    with pytest.raises(FileNotFoundError, match=message_with(tmp_path / "gtFine" / "train")):
        CityscapesSegmentation(tmp_path, split="train")


def test_cityscapes_missing_root_names_it(tmp_path):
    root = tmp_path / "no_such_dataset"
    with pytest.raises(FileNotFoundError, match=message_with(root)):
        CityscapesSegmentation(root)


def test_cityscapes_without_images_names_the_folder_searched(tmp_path):
    (tmp_path / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
    (tmp_path / "gtFine" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=message_with(tmp_path / "leftImg8bit" / "train")):
        CityscapesSegmentation(tmp_path)


def test_cityscapes_image_without_label_names_both(tmp_path):
    image = cityscapes_pair(tmp_path, "train", "aachen", "aachen_000000_000019")
    label = tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    with pytest.raises(FileNotFoundError, match=message_with(image, label)):
        CityscapesSegmentation(tmp_path)


# ---------------------------------------------------------------------------- ADE20K


def ade_pair(base: Path, folder: str, name: str, labels: np.ndarray | None) -> Path:
    """Write one ADE20K JPEG under ``base/images/folder`` and its annotation, if given."""
    image = base / "images" / folder / f"{name}.jpg"
    write_rgb(image)
    (base / "annotations" / folder).mkdir(parents=True, exist_ok=True)
    if labels is not None:
        write_gray(base / "annotations" / folder / f"{name}.png", labels)
    return image


@pytest.mark.parametrize("root_is_challenge_folder", [False, True])
def test_ade20k_maps_other_to_ignore_and_shifts_classes(tmp_path, root_is_challenge_folder):
    base = tmp_path / "ADEChallengeData2016"
    labels = label_map(1, {(0, 0): 0, (0, 1): 150, (0, 2): 75})
    ade_pair(base, "training", "ADE_train_00000001", labels)
    root = base if root_is_challenge_folder else tmp_path
    dataset = ADE20KSegmentation(root, split="train")
    image, label = dataset[0]
    assert image.dtype == torch.uint8 and image.shape == (3, H, W)
    assert label.dtype == torch.int64 and label.shape == (H, W)
    assert label[0, 0].item() == 255  # 0 = "other"
    assert label[0, 1].item() == 149
    assert label[0, 2].item() == 74
    assert label[5, 5].item() == 0
    assert dataset.num_classes == ADE20KSegmentation.NUM_CLASSES == 150
    assert len(dataset.classes) == 150 and dataset.classes[0] == "wall"


def test_ade20k_val_split_reads_validation_sorted(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for name in ["ADE_val_00000002", "ADE_val_00000001", "ADE_val_00000010"]:
        ade_pair(base, "validation", name, label_map(3))
    ade_pair(base, "training", "ADE_train_00000001", label_map(3))
    dataset = ADE20KSegmentation(tmp_path, split="val")
    names = [image.stem for image, _ in dataset.samples]
    assert names == ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000010"]


def test_ade20k_rejects_values_above_150(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    ade_pair(base, "training", "ADE_train_00000001", label_map(1, {(2, 2): 151, (3, 3): 200}))
    with pytest.raises(ValueError, match=message_with("ADE_train_00000001.png", "151, 200")):
        ADE20KSegmentation(tmp_path)[0]


def test_ade20k_without_the_layout_names_both_accepted_roots(tmp_path):
    with pytest.raises(FileNotFoundError, match=message_with(tmp_path / "ADEChallengeData2016")):
        ADE20KSegmentation(tmp_path)


def test_ade20k_without_images_names_the_folder_searched(tmp_path):
    folder = tmp_path / "ADEChallengeData2016" / "images" / "training"
    folder.mkdir(parents=True)
    (tmp_path / "ADEChallengeData2016" / "annotations" / "training").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=message_with("no images", folder)):
        ADE20KSegmentation(tmp_path)


def test_ade20k_image_without_label_names_both(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    image = ade_pair(base, "training", "ADE_train_00000001", None)
    label = base / "annotations" / "training" / "ADE_train_00000001.png"
    with pytest.raises(FileNotFoundError, match=message_with(image, label)):
        ADE20KSegmentation(tmp_path)


# ---------------------------------------------------------------------------- VOC


def voc_tree(base: Path, split_ids: dict[str, list[str]], labels: np.ndarray) -> None:
    """Write a VOC2012 folder at ``base``: split files, JPEGs and palette labels."""
    split_dir = base / "ImageSets" / "Segmentation"
    split_dir.mkdir(parents=True)
    for split, ids in split_ids.items():
        (split_dir / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for image_id in ids:
            write_rgb(base / "JPEGImages" / f"{image_id}.jpg")
            write_palette(base / "SegmentationClass" / f"{image_id}.png", labels)


VOC_LABELS = label_map(0, {(0, 0): 15, (0, 1): 20, (0, 2): 255, (1, 1): 1})


@pytest.mark.parametrize("layout", ["VOCdevkit/VOC2012", "VOC2012", ""])
def test_voc_reads_palette_indices_from_every_accepted_layout(tmp_path, layout):
    base = tmp_path / layout if layout else tmp_path
    voc_tree(base, {"train": ["2007_000032"]}, VOC_LABELS)
    dataset = VOCSegmentation(tmp_path, split="train")
    image, label = dataset[0]
    assert image.dtype == torch.uint8 and image.shape == (3, H, W)
    assert label.dtype == torch.int64 and label.shape == (H, W)
    assert label.tolist() == VOC_LABELS.astype(np.int64).tolist()
    assert label[0, 2].item() == 255  # border
    assert dataset.num_classes == 21 and dataset.classes[15] == "person"


def test_voc_lists_ids_sorted_and_reads_trainval(tmp_path):
    ids = ["2008_000002", "2007_000033", "2007_000032"]
    voc_tree(tmp_path / "VOC2012", {"trainval": ids}, VOC_LABELS)
    dataset = VOCSegmentation(tmp_path, split="trainval")
    assert [image.stem for image, _ in dataset.samples] == sorted(ids)
    assert len(dataset) == 3


def test_voc_rejects_indices_above_20_except_255(tmp_path):
    voc_tree(tmp_path, {"val": ["2007_000033"]}, label_map(0, {(4, 4): 21}))
    with pytest.raises(ValueError, match=message_with("2007_000033.png", "21")):
        VOCSegmentation(tmp_path, split="val")[0]


def test_voc_rejects_rgb_labels(tmp_path):
    voc_tree(tmp_path, {"val": ["2007_000033"]}, VOC_LABELS)
    write_rgb(tmp_path / "SegmentationClass" / "2007_000033.png", (128, 0, 0))
    with pytest.raises(ValueError, match=message_with("2007_000033.png", "palette", "RGB")):
        VOCSegmentation(tmp_path, split="val")[0]


def test_voc_missing_split_file_names_it(tmp_path):
    voc_tree(tmp_path / "VOC2012", {"train": ["2007_000032"]}, VOC_LABELS)
    expected = tmp_path / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    with pytest.raises(FileNotFoundError, match=message_with(expected)):
        VOCSegmentation(tmp_path, split="val")


def test_voc_without_any_layout_names_the_candidates(tmp_path):
    with pytest.raises(FileNotFoundError, match=message_with(tmp_path / "VOC2012")):
        VOCSegmentation(tmp_path)


def test_voc_image_without_label_names_both(tmp_path):
    voc_tree(tmp_path, {"train": ["2007_000032"]}, VOC_LABELS)
    label = tmp_path / "SegmentationClass" / "2007_000032.png"
    label.unlink()
    image = tmp_path / "JPEGImages" / "2007_000032.jpg"
    with pytest.raises(FileNotFoundError, match=message_with(image, label)):
        VOCSegmentation(tmp_path)


def test_voc_listed_image_missing_names_it_and_the_split_file(tmp_path):
    voc_tree(tmp_path, {"train": ["2007_000032"]}, VOC_LABELS)
    image = tmp_path / "JPEGImages" / "2007_000032.jpg"
    image.unlink()
    with pytest.raises(FileNotFoundError, match=message_with(image, "train.txt")):
        VOCSegmentation(tmp_path)


# ---------------------------------------------------------------------------- shared errors


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_image_raises_value_error_naming_the_file(tmp_path, damage):
    base = tmp_path / "ADEChallengeData2016"
    image = ade_pair(base, "training", "ADE_train_00000001", label_map(1))
    if damage == "garbage":
        image.write_bytes(b"this is not a JPEG")
    else:
        # a larger noisy image, cut in half: Pillow reads the header but not the pixels
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(image)
        image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    with pytest.raises(ValueError, match=message_with("cannot read", image)):
        ADE20KSegmentation(tmp_path)[0]


def test_unreadable_label_raises_value_error_naming_the_file(tmp_path):
    cityscapes_pair(tmp_path, "train", "aachen", "aachen_000000_000019", label_map(7))
    label = tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    label.write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=message_with(label)):
        CityscapesSegmentation(tmp_path)[0]


def test_image_and_label_of_different_sizes_name_both_sizes_and_the_file(tmp_path):
    image = cityscapes_pair(tmp_path, "train", "aachen", "aachen_000000_000019")
    label = tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    write_gray(label, np.full((H, W + 1), 7, dtype=np.uint8))
    with pytest.raises(ValueError, match=message_with(image, f"{H} x {W}", label, f"{H} x 13")):
        CityscapesSegmentation(tmp_path)[0]


@pytest.mark.parametrize("cls", [CityscapesSegmentation, ADE20KSegmentation, VOCSegmentation])
def test_unknown_split_lists_the_valid_ones(tmp_path, cls):
    with pytest.raises(ValueError, match=message_with("'test-dev'", "'train'", "'val'")):
        cls(tmp_path, split="test-dev")


# ---------------------------------------------------------------------------- transform, factory


def test_transform_is_applied_to_the_pair(tmp_path):
    cityscapes_pair(tmp_path, "train", "aachen", "aachen_000000_000019", label_map(26))
    seen = []

    def crop_and_flip(image, label):
        seen.append((image.dtype, label.dtype))
        return image[:, :4, :6].flip(-1), label[:4, :6].flip(-1)

    image, label = CityscapesSegmentation(tmp_path, transform=crop_and_flip)[0]
    assert seen == [(torch.uint8, torch.int64)]
    assert image.shape == (3, 4, 6) and label.shape == (4, 6)
    assert (label == 13).all()


def test_items_batch_with_a_dataloader(tmp_path):
    for name in ["a_000000", "a_000001", "a_000002"]:
        cityscapes_pair(tmp_path, "train", "a", name, label_map(8))
    images, labels = next(iter(DataLoader(CityscapesSegmentation(tmp_path), batch_size=2)))
    assert images.shape == (2, 3, H, W) and labels.shape == (2, H, W)
    assert (labels == 1).all()


def test_build_dataset_picks_the_reader_by_name(tmp_path):
    cityscapes_pair(tmp_path / "cs", "val", "a", "a_000000", label_map(7))
    ade_pair(tmp_path / "ade" / "ADEChallengeData2016", "validation", "x", label_map(1))
    voc_tree(tmp_path / "voc" / "VOCdevkit" / "VOC2012", {"val": ["2007_000032"]}, VOC_LABELS)
    assert isinstance(build_dataset("cityscapes", tmp_path / "cs", "val"), CityscapesSegmentation)
    assert isinstance(build_dataset("ade20k", str(tmp_path / "ade"), "val"), ADE20KSegmentation)
    voc = build_dataset("voc", tmp_path / "voc", "val", transform=lambda x, y: (x, y + 0))
    assert isinstance(voc, VOCSegmentation) and voc.transform is not None
    assert DATASET_NAMES == ("cityscapes", "ade20k", "voc")


def test_build_dataset_rejects_unknown_names_listing_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=message_with("'coco'", "'cityscapes'", "'ade20k'")):
        build_dataset("coco", tmp_path, "train")


# ---------------------------------------------------------------------------- label files


def test_train_ids_map_back_to_the_values_of_each_dataset_label_files(tmp_path):
    # Cityscapes: the official label ids (the test server's format); ADE20K: 1..150; VOC: same
    cityscapes_pair(tmp_path / "cs", "val", "lindau", "lindau_000000_000019", label_map(7))
    ade_pair(tmp_path / "ade" / "ADEChallengeData2016", "validation", "ADE_val_1", label_map(1))
    voc_tree(tmp_path / "voc", {"val": ["2007_000001"]}, label_map(0))
    cityscapes = CityscapesSegmentation(tmp_path / "cs", split="val")
    by_train_id = {train_id: label_id for label_id, train_id in CITYSCAPES_EXPECTED.items()}
    train_ids = np.arange(19).reshape(1, 19)
    expected = np.array([[by_train_id[t] for t in range(19)]])
    np.testing.assert_array_equal(cityscapes.to_label_file_values(train_ids), expected)
    ade20k = ADE20KSegmentation(tmp_path / "ade", split="val")
    np.testing.assert_array_equal(ade20k.to_label_file_values(np.arange(150)), np.arange(1, 151))
    voc = VOCSegmentation(tmp_path / "voc", split="val")
    np.testing.assert_array_equal(voc.to_label_file_values(np.arange(21)), np.arange(21))
    assert cityscapes.to_label_file_values(train_ids).dtype == np.uint8

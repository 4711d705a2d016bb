"""The release table of mmseg's attention models (a data file) and the hash-checked download."""

import hashlib
from collections import Counter

import pytest
import torch

from attnblocks.models.base import fetch_mmseg_checkpoint
from attnblocks.pretrained import (
    DATASETS,
    MMSEG_CHECKPOINTS,
    MMSEG_DOWNLOAD_ROOT,
    find_mmseg_checkpoint,
    load_mmseg_checkpoint,
    mmseg_align_corners,
    mmseg_pretrained_config,
)
from tests.pretrained.mmseg_meta import meta_0x, meta_1x, mmseg_metainfo, release_dataset

# releases per model in mmsegmentation 1.2.2's metafiles (config prefix, download folder)
RELEASES = {
    "danet": (16, "danet", "danet"), "ccnet": (16, "ccnet", "ccnet"),
    "nlnet": (16, "nonlocal", "nonlocal_net"), "gcnet": (16, "gcnet", "gcnet"),
    "dnlnet": (12, "dnl", "dnlnet"), "psanet": (16, "psanet", "psanet"),
    "annnet": (16, "ann", "ann"), "isanet": (16, "isanet", "isanet"),
    "ocrnet": (24, "ocrnet", "ocrnet"), "emanet": (4, "emanet", "emanet"),
}  # fmt: skip


@pytest.mark.parametrize("model", sorted(RELEASES))
def test_the_releases_of_each_model(model):
    count, prefix, folder = RELEASES[model]
    entries = [e for e in MMSEG_CHECKPOINTS.values() if e.model == model]
    assert len(entries) == count
    for entry in entries:
        assert entry.config.startswith(f"{prefix}_") and entry.run.startswith(f"{prefix}_")
        assert entry.url.startswith(f"{MMSEG_DOWNLOAD_ROOT}{folder}/{entry.run}/")
        assert entry.miou_ms_flip is None or entry.miou_ms_flip > entry.miou
        crop = "x".join(map(str, entry.crop))
        assert f"_{entry.dataset.replace('voc', 'voc12aug')}-{crop}" in entry.config
        assert entry.align_corners == (crop == "769x769") == (entry.test_crop is not None)
        assert entry.test_scale == (
            (2049, 1025)
            if crop == "769x769"
            else (2048, 1024)
            if entry.dataset == "cityscapes"
            else (2048, 512)
        )
    assert len(MMSEG_CHECKPOINTS) == sum(count for count, _, _ in RELEASES.values())


@pytest.mark.parametrize("model", ["danet", "ccnet"])
def test_danet_and_ccnet_releases(model):
    entries = [e for e in MMSEG_CHECKPOINTS.values() if e.model == model]
    assert Counter(e.dataset for e in entries) == {"cityscapes": 8, "ade20k": 4, "voc": 4}
    assert Counter(e.backbone for e in entries) == {"R-50-D8": 8, "R-101-D8": 8}
    assert Counter(e.align_corners for e in entries) == {False: 12, True: 4}  # 769x769 ones


def test_torch_hub_finds_the_hash_prefix_in_every_file_name():
    # check_hash=True compares the file's SHA-256 with what this regex finds in its name
    for entry in MMSEG_CHECKPOINTS.values():
        assert torch.hub.HASH_REGEX.search(entry.file_name).group(1) == entry.sha256_prefix
        assert len(entry.sha256_prefix) == 8


def test_find_by_config_file_name_path_or_url():
    entry = MMSEG_CHECKPOINTS["danet_r101-d8_4xb2-80k_cityscapes-769x769"]
    for name in (entry.config, entry.file_name, f"/data/{entry.file_name}", entry.url):
        assert find_mmseg_checkpoint(name) is entry
    assert find_mmseg_checkpoint("danet.pth") is None


def saved_with_hash(directory, prefix_override=None):
    """A small checkpoint file named ``danet-<first 8 hex of its SHA-256>.pth``."""
    directory.mkdir()
    source = directory / "tmp.pth"
    torch.save({"meta": {}, "state_dict": {"w": torch.arange(3.0)}}, source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:8]
    target = directory / f"danet-{prefix_override or digest}.pth"
    source.rename(target)
    return target.as_uri()


def test_download_checks_the_hash_in_the_file_name(tmp_path):
    good = saved_with_hash(tmp_path / "good")
    loaded = load_mmseg_checkpoint(good, model_dir=tmp_path / "cache", progress=False)
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(3.0))
    assert (tmp_path / "cache" / good.rsplit("/", 1)[1]).is_file()
    bad = saved_with_hash(tmp_path / "bad", prefix_override="0badc0de")
    with pytest.raises(RuntimeError, match="invalid hash value"):
        load_mmseg_checkpoint(bad, model_dir=tmp_path / "cache2", progress=False)


def test_a_config_name_downloads_its_url_with_the_hash_check(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda url, **kwargs: calls.append((url, kwargs)) or {})  # fmt: skip
    load_mmseg_checkpoint("danet_r50-d8_4xb4-20k_voc12aug-512x512")
    url, kwargs = calls[0]
    assert url == MMSEG_CHECKPOINTS["danet_r50-d8_4xb4-20k_voc12aug-512x512"].url
    assert kwargs["check_hash"] and kwargs["weights_only"] and kwargs["map_location"] == "cpu"
    with pytest.raises(ValueError, match="unknown mmseg checkpoint 'danet_r18'"):
        load_mmseg_checkpoint("danet_r18")


@pytest.mark.parametrize("config", sorted(MMSEG_CHECKPOINTS))
def test_the_meta_alone_gives_each_release_its_test_setup(config):
    # A release loaded from a dict or a renamed file is known by its meta only (the config text
    # mmseg writes into every checkpoint, here made by mmengine from mmseg 1.2.2's config for
    # the release): it must get the setup its name gives, and the one its mmseg config states.
    entry = MMSEG_CHECKPOINTS[config]
    assert release_dataset(config) == entry.dataset
    mmseg = mmseg_metainfo(entry.dataset)
    num_classes = len(mmseg["classes"])
    assert find_mmseg_checkpoint(f"/checkpoints/{entry.file_name}") is entry
    assert find_mmseg_checkpoint(f"/checkpoints/renamed-{entry.file_name}") is None
    for meta in (meta_0x(config), meta_1x(config)):
        by_meta = mmseg_pretrained_config(num_classes, meta, None)
        assert mmseg_pretrained_config(num_classes, meta, entry) == by_meta
        assert mmseg_align_corners(meta, None) == mmseg_align_corners(meta, entry)
        assert mmseg_align_corners(meta, None) is entry.align_corners
        assert by_meta.image_scale == entry.test_scale  # (2049, 1025) for the 769x769 releases
        assert (by_meta.crop_size, by_meta.stride) == (entry.test_crop, entry.test_stride)
        assert by_meta.dataset == entry.dataset
        assert by_meta.class_names == tuple(mmseg["classes"])
        assert by_meta.palette == tuple(tuple(c) for c in mmseg["palette"])
        assert (by_meta.mean, by_meta.std) == ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


def test_a_dict_is_no_release_until_its_meta_says_so():
    checkpoint = {"meta": meta_0x("danet_r50-d8_4xb2-40k_cityscapes-769x769"), "state_dict": {}}
    assert fetch_mmseg_checkpoint(checkpoint) == (None, checkpoint)


def test_the_release_overrides_the_meta():
    # the 769x769 release's name over a meta that says whole-image 512x1024 testing
    meta = meta_1x("danet_r50-d8_4xb2-40k_cityscapes-512x1024")
    entry = MMSEG_CHECKPOINTS["danet_r50-d8_4xb2-40k_cityscapes-769x769"]
    assert mmseg_pretrained_config(19, meta, None).crop_size is None
    config = mmseg_pretrained_config(19, meta, entry)
    assert (config.image_scale, config.crop_size, config.stride) == (
        (2049, 1025), (769, 769), (513, 513))  # fmt: skip
    assert not mmseg_align_corners(meta, None) and mmseg_align_corners(meta, entry)


def test_without_a_meta_the_dataset_by_class_count_gives_its_defaults():
    config = mmseg_pretrained_config(150, {}, None)
    assert config.dataset == "ade20k" and config.palette == DATASETS["ade20k"].palette
    assert config.palette[:2] == ((120, 120, 120), (180, 120, 120))  # mmseg's, not a bit map
    assert config.image_scale == (2048, 512) and config.crop_size is None


def test_pretrained_config_from_release_class_count_or_nothing():
    voc = mmseg_pretrained_config(21, {}, None)
    assert voc.dataset == "voc" and voc.class_names[15] == "person" and voc.crop_size is None
    ade = mmseg_pretrained_config(
        150, {}, MMSEG_CHECKPOINTS["danet_r50-d8_4xb4-80k_ade20k-512x512"]
    )
    assert ade.dataset == "ade20k" and ade.image_scale == (2048, 512)
    city769 = mmseg_pretrained_config(
        19, {}, MMSEG_CHECKPOINTS["ccnet_r50-d8_4xb2-40k_cityscapes-769x769"]
    )  # the release's test resize: cityscapes_769x769.py's Resize(scale=(2049, 1025))
    assert city769.image_scale == (2049, 1025) and city769.crop_size == (769, 769)
    assert mmseg_pretrained_config(5, {}, None).class_names[4] == "class 4"
    named = mmseg_pretrained_config(2, {"dataset_meta": {"classes": ["sky", "sea"]}}, None)
    assert named.class_names == ("sky", "sea") and len(named.palette) == 2


def test_class_names_and_palette_in_meta_win():
    meta = {"CLASSES": tuple(f"thing {i}" for i in range(19)),
            "PALETTE": [[i, i, i] for i in range(19)]}  # fmt: skip
    config = mmseg_pretrained_config(19, meta, None)
    assert config.class_names[3] == "thing 3" and config.palette[3] == (3, 3, 3)
    assert config.dataset == "cityscapes"  # the test resize of the dataset stays

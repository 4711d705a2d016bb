"""from_mmseg gives a release its test setup however the checkpoint arrives: the release's
name, its file, a renamed copy or its loaded dict; meta, then name, then the caller."""

from types import SimpleNamespace

import pytest
import torch

from attnblocks.models import DANet, from_mmseg
from attnblocks.models import base as models_base
from attnblocks.pretrained import MMSEG_CHECKPOINTS, mmseg_pretrained_config
from tests.compat.mmseg_reference import fixture_state_dict
from tests.pretrained.mmseg_meta import meta_0x, meta_1x

RELEASE = MMSEG_CHECKPOINTS["danet_r50-d8_4xb2-40k_cityscapes-769x769"]


@pytest.fixture(scope="module")
def checkpoint():
    """The DANet fixture's weights with the meta the 769x769 release carries (mmseg 0.x)."""
    return {"meta": meta_0x(RELEASE.config), "state_dict": fixture_state_dict()}


def test_a_769_release_from_a_dict_keeps_its_test_setup(checkpoint):
    # docs/pretrained.md's pattern: load_mmseg_checkpoint(...) then from_mmseg(checkpoint)
    model = DANet.from_mmseg(checkpoint)
    config = model.pretrained_config
    assert model.align_corners is True
    assert (config.crop_size, config.stride) == ((769, 769), (513, 513))


def test_a_769_release_known_by_its_meta_resizes_to_2049_by_1025():
    # cityscapes_769x769.py: Resize(scale=(2049, 1025), keep_ratio=True), not Cityscapes' 2048
    for meta in (meta_0x(RELEASE.config), meta_1x(RELEASE.config)):
        assert mmseg_pretrained_config(19, meta, None).image_scale == (2049, 1025)


def test_name_file_renamed_copy_and_dict_build_the_same_model(checkpoint, tmp_path, monkeypatch):
    release_file = tmp_path / RELEASE.file_name
    torch.save(checkpoint, release_file)
    renamed = tmp_path / "my-danet.pth"
    renamed.write_bytes(release_file.read_bytes())
    # the release name downloads the file: hand over the same checkpoint instead
    monkeypatch.setattr(models_base, "load_mmseg_checkpoint", lambda name: checkpoint)
    # the constructor arguments load_mmseg would build with (building is test_a_769_... 's)
    built = []
    monkeypatch.setattr(DANet, "load_mmseg", classmethod(
        lambda cls, state, meta, entry, **kw: built.append((cls, cls.mmseg_model_options(
            state, meta, entry))) or SimpleNamespace())  # a stand-in model
    )  # fmt: skip
    for source in (RELEASE.config, release_file, renamed, checkpoint):
        DANet.from_mmseg(source)
    from_mmseg(renamed)  # the class picked from the meta's decode head
    reference = built[0][1]
    assert reference["align_corners"] is True
    assert reference["pretrained_config"].crop_size == (769, 769)
    assert reference["backbone"] == "resnet50c" and reference["num_classes"] == 19
    assert len(built) == 5 and all(entry == (DANet, reference) for entry in built)


def test_the_caller_overrides_meta_and_release(checkpoint):
    model = DANet.from_mmseg(
        checkpoint, align_corners=False,
        pretrained_config={"crop_size": (512, 512), "stride": (341, 341)},
    )  # fmt: skip
    config = model.pretrained_config
    assert model.align_corners is False
    assert (config.crop_size, config.stride) == ((512, 512), (341, 341))
    assert config.image_scale == (2049, 1025) and config.dataset == "cityscapes"  # kept

"""attnblocks.models.from_mmseg: the model class read from the release name, meta or keys."""

import pytest
import torch

from attnblocks.models import MMSEG_MODELS, CCNet, DANet, base, from_mmseg, mmseg_model_class
from attnblocks.pretrained import MMSEG_CHECKPOINTS
from tests.compat.mmseg_reference import CCNET, DANET, fixture_checkpoint, fixture_state_dict


def test_every_model_with_a_table_is_registered_under_its_release_name():
    assert MMSEG_MODELS["danet"] is DANet and MMSEG_MODELS["ccnet"] is CCNet
    for name, cls in MMSEG_MODELS.items():
        assert cls.mmseg_model == name and cls.mmseg_key_map is not None
        assert cls.mmseg_head_types and cls.mmseg_head_keys


@pytest.mark.parametrize("fixture, cls", [(DANET, DANet), (CCNET, CCNet)])
def test_the_class_is_read_from_the_keys_without_meta(fixture, cls):
    model = from_mmseg(fixture_state_dict(fixture))
    assert type(model) is cls and not model.training


def test_the_meta_config_decides_before_the_keys():
    state = fixture_state_dict(DANET)
    meta = {"config": "model = dict(decode_head=dict(type='CCHead', recurrence=2))"}
    assert mmseg_model_class(state, meta) is CCNet  # then CCNet's table refuses DANet's keys
    with pytest.raises(ValueError, match="not part of mmsegmentation's CCNet"):
        from_mmseg({"meta": meta, "state_dict": state})


def test_a_head_attnblocks_does_not_have_is_named():
    meta = {"config": "model = dict(decode_head=dict(type='UPerHead'))"}
    with pytest.raises(ValueError, match="'UPerHead' decode head, which attnblocks does not"):
        from_mmseg({"meta": meta, "state_dict": fixture_state_dict(DANET)})


def test_unknown_keys_without_meta_are_a_clear_error():
    state = {"decode_head.convs.0.conv.weight": fixture_state_dict()["backbone.stem.0.weight"]}
    with pytest.raises(ValueError, match=r"cannot tell which model.*decode_head\.convs"):
        from_mmseg(state)


def test_a_release_name_picks_its_class_before_download(monkeypatch):
    fetched = []
    monkeypatch.setattr(base, "load_mmseg_checkpoint",
                        lambda name: fetched.append(name) or fixture_checkpoint(CCNET))  # fmt: skip
    model = from_mmseg("ccnet_r50-d8_4xb2-40k_cityscapes-769x769")
    assert type(model) is CCNet and fetched == ["ccnet_r50-d8_4xb2-40k_cityscapes-769x769"]
    assert model.align_corners and model.pretrained_config.image_scale == (2049, 1025)


def test_the_weights_source_is_the_release_url_or_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(base, "load_mmseg_checkpoint", lambda name: fixture_checkpoint(CCNET))
    release = "ccnet_r50-d8_4xb2-40k_cityscapes-769x769"
    url = MMSEG_CHECKPOINTS[release].url
    assert from_mmseg(release).weights_source == url
    assert CCNet.from_mmseg(release).weights_source == url
    path = tmp_path / "renamed.pth"
    torch.save(fixture_checkpoint(CCNET), path)
    assert from_mmseg(path).weights_source == str(path)
    assert from_mmseg(fixture_checkpoint(CCNET)).weights_source is None

"""timm's HRNets with mmseg's branch fusion: mmseg's HRNet-W18 outputs, any size, the timm model
of an mmseg checkpoint, resize_concat."""

import pytest
import timm
import torch
import torch.nn.functional as F

from attnblocks.models import create_backbone
from attnblocks.models.hrnet import (
    is_hrnet,
    mmseg_hrnet_backbone_name,
    mmseg_hrnet_signature,
    resize_concat,
    use_bilinear_fusion,
)
from tests.compat.mmseg_reference import fixture_arrays, fixture_state_dict
from tests.reference import relative_error

HR18 = "mmseg_ocrnet_hr18"
# mmseg's HRNet configs (configs/_base_/models/ocrnet_hr18.py and the hr18s / hr48 configs):
# stem width, then per stage (num_modules, num_blocks, num_channels).
MMSEG_HR18S = (64, ((1, (2,), (64,)), (1, (2, 2), (18, 36)), (3, (2, 2, 2), (18, 36, 72)),
                    (2, (2, 2, 2, 2), (18, 36, 72, 144))))  # fmt: skip
MMSEG_HR18 = (64, ((1, (4,), (64,)), (1, (4, 4), (18, 36)), (4, (4, 4, 4), (18, 36, 72)),
                   (3, (4, 4, 4, 4), (18, 36, 72, 144))))  # fmt: skip
MMSEG_HR48 = (64, ((1, (4,), (64,)), (1, (4, 4), (48, 96)), (4, (4, 4, 4), (48, 96, 192)),
                   (3, (4, 4, 4, 4), (48, 96, 192, 384))))  # fmt: skip


def backbone_state(state_dict):
    prefix = "backbone."
    return {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def hr18():
    backbone = create_backbone("hrnet_w18", output_stride=None, out_indices=(1, 2, 3, 4))
    backbone.load_state_dict(backbone_state(fixture_state_dict(HR18)))  # mmseg's keys as they are
    return backbone.eval()


def test_mmseg_hrnet_w18_branches_are_reproduced(hr18):
    arrays = fixture_arrays(HR18)  # input (1, 3, 65, 97): branches 17x25, 9x13, 5x7, 3x4
    with torch.no_grad():
        branches = hr18(arrays["input"])
    assert hr18.feature_info.channels() == [18, 36, 72, 144]
    for index, branch in enumerate(branches):
        reference = arrays[f"feat.{index}"]
        assert branch.shape == reference.shape
        assert relative_error(branch, reference) < 1e-6


def test_timms_own_fusion_needs_sizes_divisible_by_32(hr18):
    timms = timm.create_model("hrnet_w18", features_only=True, feature_location="")
    with torch.no_grad(), pytest.raises(RuntimeError, match="size of tensor"):
        timms(torch.randn(1, 3, 65, 97))  # nearest 2x of a 3x4 branch is not 5x7
    with torch.no_grad():
        shapes = [tuple(b.shape[-2:]) for b in hr18(torch.randn(1, 3, 33, 21))]
    assert shapes == [(9, 6), (5, 3), (3, 2), (2, 1)]


def test_bilinear_fusion_keeps_the_keys_and_upsamples_as_mmseg():
    timms = timm.create_model("hrnet_w18_small_v2", features_only=True, feature_location="")
    keys = {k: v.shape for k, v in timms.state_dict().items()}
    use_bilinear_fusion(timms)
    assert {k: v.shape for k, v in timms.state_dict().items()} == keys
    module = timms.stage4[0]
    sizes = [(11, 12), (6, 6), (3, 3), (2, 2)]  # stride-2 3x3 convs from 11 x 12
    x = [torch.randn(1, c, *size) for c, size in zip((18, 36, 72, 144), sizes)]
    with torch.no_grad():
        fused = module([t.clone() for t in x])
        branches = [branch(t) for branch, t in zip(module.branches, x)]
        # branch 0 by mmseg's rule: branch j -> conv, BN -> bilinear x 2**j -> resized to 11 x 12

        def joined(j):
            t = module.fuse_layers[0][j][:2](branches[j])
            t = F.interpolate(t, scale_factor=2**j, mode="bilinear", align_corners=False)
            return F.interpolate(t, size=(11, 12), mode="bilinear", align_corners=False)

        expected = branches[0] + joined(1) + joined(2) + joined(3)
    torch.testing.assert_close(fused[0], expected.relu())


def test_create_backbone_refuses_an_output_stride_for_an_hrnet():
    assert is_hrnet("hrnet_w48") and is_hrnet("hrnet_w18.ms_aug_in1k") and not is_hrnet("resnet50")
    with pytest.raises(
        ValueError, match=r"'hrnet_w18' is an HRNet.*pass output_stride=None, got 8"
    ):
        create_backbone("hrnet_w18", output_stride=8)
    with pytest.raises(ValueError, match="use_bilinear_fusion needs a timm HRNet"):
        use_bilinear_fusion(timm.create_model("resnet18"))


def mmseg_named_state(name):
    """An mmseg checkpoint's backbone keys for timm's ``name`` (the same names), no memory used."""
    with torch.device("meta"):
        model = timm.create_model(name, features_only=True, feature_location="")
    return {f"backbone.{k}": v for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "name, mmseg_config",
    [("hrnet_w18_small_v2", MMSEG_HR18S), ("hrnet_w18", MMSEG_HR18), ("hrnet_w48", MMSEG_HR48)],
)
def test_mmseg_hrnets_are_timms(name, mmseg_config):
    state = mmseg_named_state(name)
    assert mmseg_hrnet_signature(state) == mmseg_config
    assert mmseg_hrnet_backbone_name(state) == name


def test_the_fixture_is_hrnet_w18_and_unknown_hrnets_are_refused():
    state = fixture_state_dict(HR18)
    assert mmseg_hrnet_backbone_name(state) == "hrnet_w18"
    fewer = {k: v for k, v in state.items() if not k.startswith("backbone.stage4.2.")}
    found = r"\(2, \(4, 4, 4, 4\), \(18, 36, 72, 144\)\)\)\), which none of timm"
    with pytest.raises(ValueError, match=found):
        mmseg_hrnet_backbone_name(fewer)
    with pytest.raises(ValueError, match="expected an mmseg checkpoint on an HRNet backbone"):
        mmseg_hrnet_backbone_name({"backbone.stem.0.weight": torch.zeros(32, 3, 3, 3)})


def test_resize_concat_resizes_to_the_first_map():
    maps = [torch.randn(2, 3, 9, 7), torch.randn(2, 5, 5, 4), torch.randn(2, 2, 3, 2)]
    for align_corners in (False, True):
        out = resize_concat(maps, align_corners)
        assert out.shape == (2, 10, 9, 7)
        torch.testing.assert_close(out[:, :3], maps[0])
        second = F.interpolate(maps[1], (9, 7), mode="bilinear", align_corners=align_corners)
        torch.testing.assert_close(out[:, 3:8], second)

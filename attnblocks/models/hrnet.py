"""HRNetV2 backbones from timm, fused as mmsegmentation fuses their branches.

Sun et al., "High-Resolution Representations for Labeling Pixels and Regions", 2019,
https://arxiv.org/abs/1904.04514 (HRNetV2: all four branches, concatenated, feed the head)

timm's ``hrnet_w18_small_v2``, ``hrnet_w18``, ``hrnet_w48``... are the same networks as
mmseg's ``HRNet`` with the same module names (``conv1``, ``bn1``, ``layer1``,
``transition1..3``, ``stage2..4``), with one difference in the fusion of branches: where
a lower-resolution branch joins a higher one, timm upsamples by ``2 ** k`` with nearest
neighbours (so map sizes must divide by 32), mmseg bilinearly, then resizes to the
branch's size (any size). :func:`use_bilinear_fusion` makes a timm HRNet fuse as mmseg's
does; :func:`~attnblocks.models.create_backbone` applies it to every HRNet it builds,
with ``feature_location=""`` (the four raw branch outputs, strides 4 to 32, not timm's
classification ``incre`` features). :func:`resize_concat` is mmseg's head input
transform of HRNet models, and :func:`mmseg_hrnet_backbone_name` finds the timm model
of an mmseg checkpoint's HRNet from its weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import timm
import torch
import torch.nn.functional as F
from timm.models.hrnet import HighResolutionModule
from timm.models.hrnet import cfg_cls as TIMM_HRNET_CONFIGS
from torch import Tensor, nn

#: The HRNet configurations timm builds, by model name (the arguments of its stages).
_STAGES = ("stage1", "stage2", "stage3", "stage4")


def is_hrnet(name: str) -> bool:
    """Whether ``name`` is one of timm's HRNet models (``hrnet_w18``, ``hrnet_w48.ms_in1k``...)."""
    return name.split(".", 1)[0] in TIMM_HRNET_CONFIGS


class _ScaledBilinearUpsample(nn.Module):
    """mmseg's fusion upsampling: bilinear to ``floor(size * scale)`` (``align_corners=False``).

    Args:
        scale: the upsampling factor, ``2 ** (j - i)`` from branch ``j`` to branch ``i``.
    """

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        """Upsample ``(B, C, H, W)`` to ``(B, C, H * scale, W * scale)``."""
        size = [int(side * self.scale) for side in x.shape[-2:]]
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class _BilinearFusionModule(HighResolutionModule):
    """timm's HRNet module with mmseg's fusion: lower branches resized to the branch's size.

    Only ``forward`` differs from timm's module (the class of a built module is swapped
    to this one by :func:`use_bilinear_fusion`; parameters and keys are unchanged).
    """

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        """Run the branches on ``x`` (one map per branch) and fuse them, as mmseg's ``HRModule``."""
        if self.num_branches == 1:
            return [self.branches[0](x[0])]
        x = [branch(t) for branch, t in zip(self.branches, x)]
        fused = []
        for i, fuse_outer in enumerate(self.fuse_layers):
            y = None  # summed over j in order, as both timm and mmseg do
            for j, fuse in enumerate(fuse_outer):
                term = fuse(x[j])  # fuse_layers[i][i] is the identity
                if j > i:  # upsampled by 2 ** (j - i) from a rounded-up size: resize to x[i]'s
                    term = F.interpolate(
                        term, size=x[i].shape[-2:], mode="bilinear", align_corners=False
                    )
                y = term if y is None else y + term
            fused.append(self.fuse_act(y))
        return fused


def use_bilinear_fusion(backbone: nn.Module) -> nn.Module:
    """Make a timm HRNet fuse its branches as mmseg's HRNet does, in place.

    Every fusion from a lower-resolution branch ``j`` into branch ``i`` upsamples
    bilinearly by ``2 ** (j - i)`` (timm: nearest) and resizes the result to branch
    ``i``'s size, so that any input size works (timm's needs sizes divisible by 32).
    Parameters and state-dict keys are unchanged.

    Args:
        backbone: a timm HRNet (``hrnet_w18``...), classifier or ``features_only``.

    Returns:
        ``backbone``, changed.

    Raises:
        ValueError: if ``backbone`` has no HRNet modules.
    """
    modules = [m for m in backbone.modules() if isinstance(m, HighResolutionModule)]
    if not modules:
        raise ValueError(
            f"use_bilinear_fusion needs a timm HRNet, got a {type(backbone).__name__} without "
            "HighResolutionModule stages"
        )
    for module in modules:
        if isinstance(module.fuse_layers, nn.ModuleList):
            for fuse_outer in module.fuse_layers:
                for fuse in fuse_outer:
                    last = fuse[-1] if isinstance(fuse, nn.Sequential) else None
                    if isinstance(last, nn.Upsample):
                        fuse[-1] = _ScaledBilinearUpsample(int(last.scale_factor))
        module.__class__ = _BilinearFusionModule  # forward only; same parameters and keys
    return backbone


def resize_concat(features: Sequence[Tensor], align_corners: bool = False) -> Tensor:
    """mmseg's ``resize_concat``: every map resized (bilinear) to the first's size, concatenated.

    Args:
        features: ``(B, C_i, H_i, W_i)`` maps, the highest resolution first.
        align_corners: of the bilinear resizing (the head's ``align_corners`` in mmseg).

    Returns:
        ``(B, sum C_i, H_0, W_0)``.
    """
    size = features[0].shape[-2:]
    resized = [
        F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners) for x in features
    ]
    return torch.cat(resized, dim=1)


# The signature of an HRNet: stem width, then per stage (modules, blocks per branch, widths).
Signature = tuple[int, tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]]


def _timm_signature(config: Mapping) -> Signature:
    stages = tuple(
        (
            int(config[stage]["num_modules"]),
            tuple(int(n) for n in config[stage]["num_blocks"]),
            tuple(int(n) for n in config[stage]["num_channels"]),
        )
        for stage in _STAGES
    )
    return int(config["stem_width"]), stages


def _count(keys: Sequence[str], pattern: str) -> int:
    """1 + the largest index the regex ``pattern`` (one group) finds in ``keys``; 0 if none."""
    compiled = re.compile(pattern)
    found = [int(m[1]) for m in map(compiled.match, keys) if m]
    return max(found) + 1 if found else 0


def mmseg_hrnet_signature(state_dict: Mapping[str, Tensor]) -> Signature:
    """The stage configuration of the mmseg HRNet in a checkpoint, read from its weights.

    Args:
        state_dict: the checkpoint's weights (mmseg key names, ``backbone.`` first).
    """
    keys = [k for k in state_dict if k.startswith("backbone.")]
    stem = int(state_dict["backbone.conv1.weight"].shape[0])
    layer1 = _count(keys, r"backbone\.layer1\.(\d+)\.")
    width = int(state_dict["backbone.layer1.0.conv1.weight"].shape[0])
    stages = [(1, (layer1,), (width,))]
    for index in (2, 3, 4):
        prefix = rf"backbone\.stage{index}\."
        modules = _count(keys, prefix + r"(\d+)\.")
        branches = _count(keys, prefix + r"0\.branches\.(\d+)\.")
        blocks = tuple(
            _count(keys, prefix + rf"0\.branches\.{b}\.(\d+)\.") for b in range(branches)
        )
        widths = tuple(
            int(state_dict[f"backbone.stage{index}.0.branches.{b}.0.conv1.weight"].shape[0])
            for b in range(branches)
        )
        stages.append((modules, blocks, widths))
    return stem, tuple(stages)


def mmseg_hrnet_backbone_name(state_dict: Mapping[str, Tensor]) -> str:
    """timm's name of the HRNet in an mmseg checkpoint (``hrnet_w18_small_v2``, ``hrnet_w18``...).

    The stage configuration (stem width, modules, blocks and widths of every branch) is
    read from the weights and must equal one of timm's HRNet configurations exactly;
    mmseg's HRNetV2p-W18-Small, -W18 and -W48 are timm's ``hrnet_w18_small_v2``,
    ``hrnet_w18`` and ``hrnet_w48``.

    Args:
        state_dict: the checkpoint's weights (mmseg key names).

    Raises:
        ValueError: if the checkpoint holds no HRNet, or one no timm model builds.
    """
    needed = ("backbone.conv1.weight", "backbone.layer1.0.conv1.weight",
              "backbone.stage4.0.branches.3.0.conv1.weight")  # fmt: skip
    missing = [key for key in needed if key not in state_dict]
    if missing:
        raise ValueError(f"expected an mmseg checkpoint on an HRNet backbone; it lacks {missing}")
    found = mmseg_hrnet_signature(state_dict)
    for name, config in TIMM_HRNET_CONFIGS.items():
        if timm.is_model(name) and _timm_signature(config) == found:
            return name
    known = {n: _timm_signature(c) for n, c in TIMM_HRNET_CONFIGS.items() if timm.is_model(n)}
    raise ValueError(
        "this checkpoint's HRNet (stem width, then per stage: modules, blocks per branch, "
        f"branch widths) is {found}, which none of timm's HRNets has: {known}"
    )

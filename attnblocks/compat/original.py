"""The authors' DANet (https://github.com/junfu1115/DANet) as tables for :class:`KeyMap`.

Their ``PAM_Module`` and ``CAM_Module`` state dicts load into :class:`attnblocks.PAM`
and :class:`attnblocks.CAM` unchanged. Their ``DANetHead`` names its parts by
number (``conv5a``, ``sa``, ``conv51``, ``conv6``...) and their DANet keeps its
backbone under ``pretrained.``; the tables here rename those keys to this
package's (``head.attention.pam_in.conv.weight``, ``backbone.layer1.0.conv1.weight``).
Their backbone keys are torchvision's ResNet names, which timm's ResNets share.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ._keymap import KeyMap, Rename, prefixed, unwrap_state_dict

# Their DANetHead -> our DANetHead; ".0"/".1" index their nn.Sequential.
ORIGINAL_DANET_HEAD_RULES: tuple[Rename, ...] = (
    Rename("conv5a.0.", "attention.pam_in.conv."),
    Rename("conv5a.1.", "attention.pam_in.norm."),
    Rename("conv5c.0.", "attention.cam_in.conv."),
    Rename("conv5c.1.", "attention.cam_in.norm."),
    Rename("sa.", "attention.pam."),
    Rename("sc.", "attention.cam."),
    Rename("conv51.0.", "attention.pam_out.conv."),
    Rename("conv51.1.", "attention.pam_out.norm."),
    Rename("conv52.0.", "attention.cam_out.conv."),
    Rename("conv52.1.", "attention.cam_out.norm."),
    Rename("conv6.1.", "pam_classifier.conv."),  # the PAM branch's classifier (their `sa_output`)
    Rename("conv7.1.", "cam_classifier.conv."),  # the CAM branch's classifier (their `sc_output`)
    Rename("conv8.1.", "fused_classifier.conv."),  # classifies the sum (their `sasc_output`)
)

ORIGINAL_DANET_HEAD = KeyMap(
    source="the authors' DANetHead",
    renames=ORIGINAL_DANET_HEAD_RULES,
    strip=(),
    hint="check in_channels and num_classes",
)

ORIGINAL_DANET = KeyMap(
    source="the authors' DANet",
    renames=(
        Rename("pretrained.", "backbone."),
        *prefixed(ORIGINAL_DANET_HEAD_RULES, "head.", "head."),
    ),
    drop=("pretrained.fc.",),  # the ImageNet classifier their backbone kept but never used
    hint="check backbone, num_classes and multi_grid",
)


def convert_original_head_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename the keys of the authors' ``DANetHead`` to :class:`attnblocks.models.DANetHead`'s.

    The tensors are passed through unchanged; load the result with
    ``head.load_state_dict(converted)`` (strict), which reports any key the
    authors' head has and ours lacks, or the reverse.

    Args:
        state_dict: the authors' head state dict, keys without the ``head.`` prefix
            (``conv5a.0.weight``, ``sa.gamma``, ``conv8.1.bias``...).

    Returns:
        A new dict with this package's key names.

    Raises:
        ValueError: listing every key that is not part of the authors' head.
    """
    return ORIGINAL_DANET_HEAD.convert(state_dict)


def convert_original_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """Rename the keys of the authors' DANet checkpoint to :class:`attnblocks.models.DANet`'s.

    Accepts their raw state dict or their ``{"state_dict": ...}`` file, strips the
    ``module.`` prefix that ``DataParallel`` adds, and drops their unused
    ``pretrained.fc.*`` classifier. ``pretrained.*`` becomes ``backbone.*``, and
    ``head.*`` is renamed as :func:`convert_original_head_state_dict` does.

    Args:
        checkpoint: the loaded checkpoint.

    Returns:
        A new state dict with this package's key names (tensors unchanged).

    Raises:
        ValueError: listing keys that belong to neither their backbone nor their head
            (an auxiliary ``auxlayer`` of a model trained with ``aux=True``, say).
    """
    return ORIGINAL_DANET.convert(unwrap_state_dict(checkpoint))


def load_original_state_dict(model: nn.Module, checkpoint: Mapping[str, Any]) -> None:
    """Load the authors' DANet checkpoint into ``model`` (an :class:`attnblocks.models.DANet`).

    Stricter than ``load_state_dict(strict=False)``, which the authors' loader used and
    which silently leaves layers random: every key of ``model`` must be filled and
    every key of the checkpoint used, with matching shapes (see
    :func:`~attnblocks.compat.load_state_dict_strictly`).

    Args:
        model: the DANet to fill, built with the checkpoint's configuration.
        checkpoint: the loaded checkpoint (see :func:`convert_original_state_dict`).

    Raises:
        ValueError: listing unknown keys, missing keys, unexpected keys and shape mismatches.
    """
    ORIGINAL_DANET.load_into(model, checkpoint)

"""Loading checkpoints of the authors' DANet (https://github.com/junfu1115/DANet).

Their ``PAM_Module`` and ``CAM_Module`` state dicts load into :class:`attnblocks.PAM`
and :class:`attnblocks.CAM` unchanged. Their ``DANetHead`` names its parts by
number (``conv5a``, ``sa``, ``conv51``, ``conv6``...) and their DANet keeps its
backbone under ``pretrained.``; the functions here rename those keys to this
package's (``head.attention.pam_in.conv.weight``, ``backbone.layer1.0.conv1.weight``).
Their backbone keys are torchvision's ResNet names, which timm's ResNets share.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

# (authors' prefix, ours) for DANetHead, checked in order; ".0"/".1" index their nn.Sequential.
_HEAD_PREFIXES: tuple[tuple[str, str], ...] = (
    ("conv5a.0.", "attention.pam_in.conv."),
    ("conv5a.1.", "attention.pam_in.norm."),
    ("conv5c.0.", "attention.cam_in.conv."),
    ("conv5c.1.", "attention.cam_in.norm."),
    ("sa.", "attention.pam."),
    ("sc.", "attention.cam."),
    ("conv51.0.", "attention.pam_out.conv."),
    ("conv51.1.", "attention.pam_out.norm."),
    ("conv52.0.", "attention.cam_out.conv."),
    ("conv52.1.", "attention.cam_out.norm."),
    ("conv6.1.", "pam_classifier.conv."),  # conv6 classifies the PAM branch (their `sa_output`)
    ("conv7.1.", "cam_classifier.conv."),  # conv7 classifies the CAM branch (their `sc_output`)
    ("conv8.1.", "fused_classifier.conv."),  # conv8 classifies the sum (their `sasc_output`)
)


def _rename(key: str, prefixes: tuple[tuple[str, str], ...]) -> str | None:
    """``key`` with its first matching prefix replaced, or None when no prefix matches."""
    for old, new in prefixes:
        if key.startswith(old):
            return new + key[len(old) :]
    return None


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
    converted: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        new_key = _rename(key, _HEAD_PREFIXES)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    if unknown:
        known = ", ".join(old.rstrip(".") for old, _ in _HEAD_PREFIXES)
        raise ValueError(
            f"keys that are not part of the authors' DANetHead: {sorted(unknown)}; "
            f"expected keys under {known}"
        )
    return converted


_STALE_PREFIXES = ("pretrained.fc.",)  # the ImageNet classifier their backbone kept but never used


def _unwrap(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict inside a checkpoint: ``checkpoint["state_dict"]`` or the mapping itself."""
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        return checkpoint["state_dict"]
    return checkpoint


def convert_original_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """Rename the keys of the authors' DANet checkpoint to :class:`attnblocks.models.DANet`'s.

    Accepts their raw state dict or their ``{"state_dict": ...}`` file, strips the
    ``module.`` prefix that ``DataParallel`` adds, and drops their unused
    ``pretrained.fc.*`` classifier. ``pretrained.*`` becomes ``backbone.*``, and
    ``head.*`` is renamed by :func:`convert_original_head_state_dict`.

    Args:
        checkpoint: the loaded checkpoint.

    Returns:
        A new state dict with this package's key names (tensors unchanged).

    Raises:
        ValueError: listing keys that belong to neither their backbone nor their head
            (an auxiliary ``auxlayer`` of a model trained with ``aux=True``, say).
    """
    state_dict = {key.removeprefix("module."): value for key, value in _unwrap(checkpoint).items()}
    backbone, head, unknown = {}, {}, []
    for key, value in state_dict.items():
        if key.startswith(_STALE_PREFIXES):
            continue
        if key.startswith("pretrained."):
            backbone["backbone." + key.removeprefix("pretrained.")] = value
        elif key.startswith("head."):
            head[key.removeprefix("head.")] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"keys that are neither 'pretrained.*' (backbone) nor 'head.*' in the DANet "
            f"checkpoint: {sorted(unknown)}"
        )
    converted = {
        "head." + key: value for key, value in convert_original_head_state_dict(head).items()
    }
    return {**backbone, **converted}


def load_original_state_dict(model: nn.Module, checkpoint: Mapping[str, Any]) -> None:
    """Load the authors' DANet checkpoint into ``model`` (an :class:`attnblocks.models.DANet`).

    Stricter than ``load_state_dict(strict=False)``, which the authors' loader used and
    which silently leaves layers random: every key of ``model`` must be filled and
    every key of the checkpoint used, with matching shapes. Only BatchNorm's
    ``num_batches_tracked`` counters may be absent (older checkpoints lack them; they
    do not affect the output) and keep the model's values.

    Args:
        model: the DANet to fill, built with the checkpoint's configuration.
        checkpoint: the loaded checkpoint (see :func:`convert_original_state_dict`).

    Raises:
        ValueError: listing missing keys, unexpected keys and shape mismatches.
    """
    converted = convert_original_state_dict(checkpoint)
    expected = model.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):
            converted.setdefault(key, value)
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(converted[key].shape)}, model {tuple(expected[key].shape)}"
        for key in expected
        if key in converted and tuple(converted[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"missing keys ({len(missing)}): {missing}" if missing else "",
            f"unexpected keys ({len(unexpected)}): {unexpected}" if unexpected else "",
            f"shape mismatches: {mismatched}" if mismatched else "",
        ]
        raise ValueError(
            "the checkpoint does not match this DANet (check backbone, num_classes and "
            "multi_grid); " + "; ".join(p for p in problems if p)
        )
    model.load_state_dict(converted, strict=True)

"""Loading checkpoints of the authors' DANet (https://github.com/junfu1115/DANet).

Their ``PAM_Module`` and ``CAM_Module`` state dicts load into :class:`attnblocks.PAM`
and :class:`attnblocks.CAM` unchanged. Their ``DANetHead`` names its parts by
number (``conv5a``, ``sa``, ``conv51``, ``conv6``...); the functions here rename
those keys to this package's descriptive ones.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

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

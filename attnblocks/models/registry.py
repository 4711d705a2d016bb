"""One entry point for mmsegmentation checkpoints: the model class is read from the file.

``attnblocks.models.from_mmseg(path_or_checkpoint)`` recognises the architecture of a
checkpoint, in this order: the release it names (config name, file name or URL), the
decode head ``type`` in the config text its ``meta`` carries (read as data, never
executed), and last the head's own key names. Every model class that loads mmseg
checkpoints registers itself by defining ``mmseg_model`` (see
:class:`~attnblocks.models.SegmentationModel`); nothing here lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from ..compat import read_mmseg_checkpoint
from ..compat.mmseg_config import mmseg_config_of, mmseg_decode_head_types
from .base import MMSEG_MODELS, SegmentationModel, fetch_mmseg_checkpoint, mmseg_weights_source


def mmseg_model_class(
    state_dict: Mapping[str, Tensor], meta: Mapping[str, Any]
) -> type[SegmentationModel]:
    """The model class of an mmseg checkpoint, from its meta config, else from its keys.

    Args:
        state_dict: the checkpoint's weights (mmseg key names, ``module.`` stripped).
        meta: the checkpoint's ``meta`` (``{}`` without one).

    Raises:
        ValueError: for a decode head this package does not have, naming it, or weights
            whose head no registered model recognises.
    """
    config = mmseg_config_of(meta)
    head_types = mmseg_decode_head_types(config) if config is not None else ()
    if head_types:
        head = head_types[-1]  # a cascade's last head makes the prediction
        owner = next((c for c in MMSEG_MODELS.values() if head in c.mmseg_head_types), None)
        if owner is None:
            known = sorted(t for c in MMSEG_MODELS.values() for t in c.mmseg_head_types)
            raise ValueError(
                f"the checkpoint's config has mmseg's {head!r} decode head, which attnblocks "
                f"does not have; it loads {known}"
            )
        return owner
    matches = [
        c for c in MMSEG_MODELS.values() if any(k.startswith(c.mmseg_head_keys) for k in state_dict)
    ]
    if len(matches) == 1:
        return matches[0]
    prefixes = sorted(
        {".".join(k.split(".")[:2]) for k in state_dict if k.startswith("decode_head.")}
    )
    found = "several models: " + ", ".join(c.__name__ for c in matches) if matches else "none"
    raise ValueError(
        "cannot tell which model this mmseg checkpoint holds: its meta has no config and its "
        f"decode head keys ({prefixes[:12]}) match {found}; call from_mmseg on the model class"
    )


def from_mmseg(
    path_or_checkpoint: str | Path | Mapping[str, Any], **kwargs: Any
) -> SegmentationModel:
    """Build the model of any supported mmsegmentation checkpoint and load it strictly.

    The class is recognised from the release name, the checkpoint's meta config or its
    keys (see :func:`mmseg_model_class`); the rest is that class's ``from_mmseg``.

    Args:
        path_or_checkpoint: an mmseg ``.pth`` file, its loaded contents (``{"meta": ...,
            "state_dict": ...}`` or a bare state dict), a config name of
            :data:`attnblocks.pretrained.MMSEG_CHECKPOINTS` or a URL.
        **kwargs: constructor arguments of the model that override the inferred ones.

    Returns:
        The model in eval mode, e.g. a :class:`~attnblocks.models.DANet`.

    Raises:
        ValueError: for a checkpoint of a head this package does not have, or weights that
            do not fit the recognised model (listing what does not fit).
    """
    entry, checkpoint = fetch_mmseg_checkpoint(path_or_checkpoint)
    state_dict, meta = read_mmseg_checkpoint(checkpoint, "attnblocks.models.from_mmseg")
    cls = MMSEG_MODELS[entry.model] if entry is not None and entry.model in MMSEG_MODELS else None
    if cls is None:
        if entry is not None:
            raise ValueError(
                f"{entry.config!r} is a release of mmseg's {entry.model!r} models, which "
                f"attnblocks does not load yet; it loads {sorted(MMSEG_MODELS)}"
            )
        cls = mmseg_model_class(state_dict, meta)
    model = cls.load_mmseg(state_dict, meta, entry, **kwargs)
    model.weights_source = mmseg_weights_source(path_or_checkpoint, entry)
    return model

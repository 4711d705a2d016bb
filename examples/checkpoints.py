"""Checkpoints of examples/train.py: atomic, the last few kept, unreadable ones reported by name.

A run folder holds ``checkpoint-<iteration>.pt`` for the last ``keep`` checkpoints and
``checkpoint.pt``, a second name (a hard link, or a copy where the file system has none)
for the newest. Every file is written under a temporary name and renamed into place,
so a kill never leaves half a file under a checkpoint's name. A checkpoint that cannot
be read (truncated by a full disk, say) is reported with its path, and
:func:`latest_checkpoint` falls back to the one before it.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnblocks.models import MMSEG_MODELS, CCNet, DANet
from attnblocks.models.base import SegmentationModel

log = logging.getLogger(__name__)

LATEST = "checkpoint.pt"
_NUMBERED_PATTERN = "checkpoint-*.pt"
# what a checkpoint of examples/train.py holds at least, for evaluate.py and --resume alike
_REQUIRED_KEYS = ("model", "model_config", "classes", "iteration")
#: The examples' --model names: every model class attnblocks registers for mmseg checkpoints
#: (``attnblocks.models.MMSEG_MODELS``, the same dict: a class added there appears here).
MODELS: dict[str, type[SegmentationModel]] = MMSEG_MODELS


def model_name(checkpoint: dict[str, Any]) -> str:
    """The ``--model`` a checkpoint was trained with; one without the key predates CCNet."""
    return checkpoint.get("model_name", "danet")


def model_class_named(class_name: str) -> type[SegmentationModel] | None:
    """The registered model class called ``class_name`` (``"DANet"``), or None."""
    return next((cls for cls in MODELS.values() if cls.__name__ == class_name), None)


def constructor_parameters(model_class: type[SegmentationModel]) -> dict[str, inspect.Parameter]:
    """The keyword arguments a model class's constructor takes, by name."""
    parameters = inspect.signature(model_class.__init__).parameters
    return {name: p for name, p in parameters.items() if name != "self"}


def attention_gammas(model: SegmentationModel) -> dict[str, nn.Parameter]:
    """The learnable residual ``gamma`` of each attention block of a model, by short name.

    DANet's are ``pam`` and ``cam``, CCNet's ``cca``; other models' are the head's
    parameters named ``gamma``, by their module's path (``attention_block``). A model
    without any has none.
    """
    if isinstance(model, DANet):
        return {"pam": model.head.attention.pam.gamma, "cam": model.head.attention.cam.gamma}
    if isinstance(model, CCNet):
        return {"cca": model.head.attention.gamma}
    return {
        name.removesuffix("gamma").strip(".").replace(".", "_") or "gamma": parameter
        for name, parameter in model.head.named_parameters()
        if name.split(".")[-1] == "gamma"
    }


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: truncated, corrupt, or not from train.py."""


def numbered_checkpoints(folder: Path) -> list[Path]:
    """The ``checkpoint-<iteration>.pt`` files in ``folder``, newest (highest iteration) first."""

    def iteration(path: Path) -> int:
        number = path.stem.removeprefix("checkpoint-")
        return int(number) if number.isdigit() else -1

    return sorted((p for p in folder.glob(_NUMBERED_PATTERN) if iteration(p) >= 0),
                  key=iteration, reverse=True)  # fmt: skip


def save_checkpoint(folder: Path, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as ``checkpoint-<iteration>.pt``, make it ``checkpoint.pt``, prune old ones.

    Args:
        folder: the run folder.
        state: what to save; ``state["iteration"]`` names the file.
        keep: how many numbered checkpoints to keep (the newest ones), at least 1.

    Returns:
        The numbered checkpoint written.
    """
    numbered = folder / f"checkpoint-{state['iteration']:07d}.pt"
    temporary = _temporary(numbered)
    with open(temporary, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())  # on disk before the rename makes it a checkpoint
    os.replace(temporary, numbered)
    latest = _temporary(folder / LATEST)
    try:
        os.link(numbered, latest)  # a second name for the same file: nothing copied
    except OSError:  # file systems without hard links
        shutil.copyfile(numbered, latest)
    os.replace(latest, folder / LATEST)
    for old in numbered_checkpoints(folder)[max(keep, 1) :]:
        old.unlink()
    return numbered


def _temporary(path: Path) -> Path:
    """``path`` with ``.tmp`` appended, any stale file of that name removed."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    return temporary


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint of examples/train.py on the CPU.

    Args:
        path: the checkpoint file.

    Raises:
        FileNotFoundError: there is no such file.
        CheckpointError: the file is truncated, corrupt or not a train.py checkpoint; the
            message names the file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        # Our own files: they hold numpy and Python random states besides tensors.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch reports damage as RuntimeError, EOFError, UnpicklingError...
        reason = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise CheckpointError(
            f"cannot read the checkpoint {path} (truncated or corrupt?): {reason}"
        ) from error
    if not isinstance(checkpoint, dict) or not all(key in checkpoint for key in _REQUIRED_KEYS):
        raise CheckpointError(
            f"{path} is not a checkpoint of examples/train.py (expected a dict with "
            f"{', '.join(_REQUIRED_KEYS)})"
        )
    return checkpoint


def latest_checkpoint(folder: Path) -> tuple[Path, dict[str, Any]]:
    """The newest readable checkpoint in ``folder``: ``checkpoint.pt``, else the numbered ones.

    Each unreadable file is logged with its path and the one before it is tried.

    Args:
        folder: the run folder.

    Returns:
        The file read and its contents.

    Raises:
        FileNotFoundError: the folder holds no checkpoint.
        CheckpointError: none of its checkpoints can be read.
    """
    candidates = [folder / LATEST] if (folder / LATEST).is_file() else []
    for path in numbered_checkpoints(folder):
        if not candidates or not os.path.samefile(path, candidates[0]):  # checkpoint.pt's twin
            candidates.append(path)
    if not candidates:
        raise FileNotFoundError(f"no checkpoint at {folder / LATEST}")
    for path, previous in zip(candidates, candidates[1:]):
        try:
            return path, read_checkpoint(path)
        except CheckpointError as error:
            log.warning("%s; trying the previous checkpoint, %s", error, previous)
    return candidates[-1], read_checkpoint(candidates[-1])


def load_model(path: Path, device: torch.device) -> tuple[SegmentationModel, dict[str, Any]]:
    """The trained model of a checkpoint (eval mode, on ``device``) and the checkpoint.

    Args:
        path: a checkpoint of examples/train.py.
        device: where the model goes.

    Raises:
        FileNotFoundError: there is no such file.
        CheckpointError: the file cannot be read (the message names it).
    """
    checkpoint = read_checkpoint(path)
    name = model_name(checkpoint)
    if name not in MODELS:
        raise CheckpointError(
            f"{path} holds a model named {name!r}; expected one of {sorted(MODELS)}"
        )
    model = MODELS[name](**checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint

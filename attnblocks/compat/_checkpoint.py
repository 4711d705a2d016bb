"""Reading checkpoint files safely: tensors and plain containers only, nothing executed."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def read_checkpoint(path_or_checkpoint: str | Path | Mapping[str, Any], caller: str) -> Mapping:
    """A checkpoint's contents: the mapping itself, or a file read with ``weights_only=True``.

    Args:
        path_or_checkpoint: a checkpoint file, or its already loaded contents.
        caller: the function the user called (``"DANet.from_mmseg"``), for the message
            that tells how to load a file that ``weights_only`` refuses.

    Raises:
        FileNotFoundError: if the path is not a file.
        ValueError: if the file holds objects besides tensors and plain containers, or
            is not a mapping.
    """
    if isinstance(path_or_checkpoint, Mapping):
        return path_or_checkpoint
    path = Path(path_or_checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds objects besides tensors (numpy scalars in the authors' "
            "{'best_pred': ...}, say), which weights_only loading refuses. If you trust the "
            "file, load it yourself with torch.load(path, map_location='cpu', "
            f"weights_only=False) and pass the result to {caller}."
        ) from error
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"{path} holds a {type(checkpoint).__name__}, expected a state dict or a "
            "mapping with one under 'state_dict'"
        )
    return checkpoint

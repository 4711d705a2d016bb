"""Reading checkpoint files safely: tensors and plain containers only, nothing executed.

A file that cannot be a checkpoint (text, an HTML page saved instead of a download, an
empty file) or that is cut short (an interrupted download, a full disk) gets an error
that names the file and says which of these it is, before or instead of torch's own.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

# torch.save writes a zip archive (torch >= 1.6) or, in the legacy format, a pickle stream
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_OPCODE = 0x80  # the first byte of a pickle of protocol 2 and above
_PEEK = 64  # bytes shown of a file that is not a checkpoint


def _describe_start(head: bytes) -> str:
    """The first bytes of a file, as text when they are text."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:  # (a multi-byte character cut at the end counts as binary)
        text = ""
    if not text.strip() or not all(c.isprintable() or c.isspace() for c in text):
        return f"bytes {head[:16]!r}"
    return f"text {text.strip().splitlines()[0]!r}"


def check_checkpoint_format(path: Path) -> None:
    """Raise a ValueError naming ``path`` unless it starts as a file of ``torch.save`` does.

    A zip archive must be whole (its central directory, at the end, present); a legacy
    file must start as a pickle. Damage inside a file that starts right is found by
    ``torch.load``.

    Args:
        path: an existing file.

    Raises:
        ValueError: the file is empty, is not a PyTorch checkpoint (text, an HTML page,
            another format) or is a truncated zip archive.
    """
    with open(path, "rb") as file:
        head = file.read(_PEEK)
    if not head:
        raise ValueError(f"{path} is empty (0 bytes), not a PyTorch checkpoint")
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise ValueError(
                f"{path} is truncated or damaged: a zip archive as torch.save writes, but its "
                f"end is missing ({path.stat().st_size} bytes; an interrupted download or a "
                "full disk?); download or copy it again"
            )
        return
    if head[0] != _PICKLE_PROTOCOL_OPCODE:
        hint = " (an HTML page saved instead of the file?)" if b"<" in head[:16] else ""
        raise ValueError(
            f"{path} is not a PyTorch checkpoint: it starts with {_describe_start(head)}{hint}, "
            "not a zip archive or pickle as torch.save writes"
        )


def read_checkpoint(path_or_checkpoint: str | Path | Mapping[str, Any], caller: str) -> Mapping:
    """A checkpoint's contents: the mapping itself, or a file read with ``weights_only=True``.

    Args:
        path_or_checkpoint: a checkpoint file, or its already loaded contents.
        caller: the function the user called (``"DANet.from_mmseg"``), for the message
            that tells how to load a file that ``weights_only`` refuses.

    Raises:
        FileNotFoundError: if the path is not a file.
        ValueError: if the file is not a PyTorch checkpoint (text, empty...), is truncated
            or damaged, holds objects besides tensors and plain containers, or is not a
            mapping; the message names the file.
    """
    if isinstance(path_or_checkpoint, Mapping):
        return path_or_checkpoint
    path = Path(path_or_checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    check_checkpoint_format(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only load failed" not in str(error).lower():
            raise _damaged(path, error) from error
        raise ValueError(
            f"{path} holds objects besides tensors (numpy scalars in the authors' "
            "{'best_pred': ...}, say), which weights_only loading refuses. If you trust the "
            "file, load it yourself with torch.load(path, map_location='cpu', "
            f"weights_only=False) and pass the result to {caller}."
        ) from error
    except Exception as error:  # torch reports damage as RuntimeError, EOFError, struct.error...
        raise _damaged(path, error) from error
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"{path} holds a {type(checkpoint).__name__}, expected a state dict or a "
            "mapping with one under 'state_dict'"
        )
    return checkpoint


def _damaged(path: Path, error: BaseException) -> ValueError:
    reason = (str(error).strip() or type(error).__name__).splitlines()[0]
    return ValueError(
        f"cannot read {path}: the checkpoint is truncated or damaged ({reason}); download "
        "or copy it again"
    )

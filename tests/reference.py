"""Test helpers: the authors' fixtures, their fill-rule weights and float64 references."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

DATA_DIR = Path(__file__).parent / "data" / "danet_reference"
MM_DATA_DIR = Path(__file__).parent / "data" / "mm_reference"  # OpenMMLab's blocks and segmentors


@cache
def manifest(data_dir: Path = DATA_DIR) -> dict:
    """The fixtures' manifest: configuration and ordered state-dict keys of each."""
    return json.loads((data_dir / "manifest.json").read_text())


def load_arrays(name: str, data_dir: Path = DATA_DIR) -> dict[str, Tensor]:
    """The arrays of fixture ``name`` (``pam``, ``cam``, ``head``) as float32 tensors."""
    with np.load(data_dir / f"{name}.npz") as arrays:
        return {key: torch.from_numpy(arrays[key].copy()) for key in arrays.files}


def fill_rule_state_dict(name: str, data_dir: Path = DATA_DIR) -> dict[str, Tensor]:
    """The weights of fixture ``name``, regenerated with the fill rule of its README."""
    entry = manifest(data_dir)[name]
    return fill_rule(entry["keys"], entry["weights_seed"])


def fill_rule(keys: list, seed: int) -> dict[str, Tensor]:
    """Weights for ``[key, shape]`` pairs by the fixtures' fill rule, drawn in order from ``seed``.

    mmcv's ``Scale`` (a key ending in ``scale``) is filled like ``gamma``.
    """
    rng = np.random.default_rng(seed)
    state: dict[str, Tensor] = {}
    for key, shape in keys:
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            state[key] = torch.tensor(0)
            continue
        z = rng.standard_normal(shape)
        if leaf in ("gamma", "scale"):
            value = 0.5 + 0.1 * z
        elif leaf == "weight" and len(shape) == 4:
            value = z * np.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))
        elif leaf == "weight":
            value = 1.0 + 0.1 * z
        elif leaf == "running_var":
            value = 1.0 + 0.1 * np.abs(z)
        else:
            value = 0.1 * z
        state[key] = torch.from_numpy(np.asarray(value, dtype=np.float32))
    return state


def relative_error(ours: Tensor, reference: Tensor) -> float:
    """``||ours - reference|| / ||reference||`` in float64; ``||ours||`` when the reference is 0."""
    ours, reference = ours.double(), reference.double()
    scale = reference.norm()
    return ((ours - reference).norm() / (scale if scale > 0 else 1.0)).item()


def reference_pam(x: Tensor, state: dict[str, Tensor]) -> Tensor:
    """The authors' PAM_Module forward, written out with plain torch ops in x's dtype."""
    b, c, h, w = x.shape
    state = {key: value.to(x.dtype) for key, value in state.items()}

    def project(name: str) -> Tensor:
        return F.conv2d(x, state[f"{name}.weight"], state[f"{name}.bias"]).reshape(b, -1, h * w)

    query = project("query_conv").permute(0, 2, 1)  # (B, N, C')
    key = project("key_conv")  # (B, C', N)
    attention = torch.softmax(torch.bmm(query, key), dim=-1)  # (B, N, N)
    out = torch.bmm(project("value_conv"), attention.permute(0, 2, 1)).reshape(b, c, h, w)
    return state["gamma"] * out + x


def reference_cam(x: Tensor, gamma: float, mode: str = "original") -> Tensor:
    """The authors' CAM_Module forward (``mode="paper"``: plain softmax(E)) in x's dtype."""
    b, c, h, w = x.shape
    maps = x.reshape(b, c, h * w)
    energy = torch.bmm(maps, maps.permute(0, 2, 1))  # (B, C, C)
    if mode == "original":
        energy = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
    attention = torch.softmax(energy, dim=-1)
    return gamma * torch.bmm(attention, maps).reshape(b, c, h, w) + x


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an operator returns while the mode is active.

    Every aten operator of forward and backward passes through ``__torch_dispatch__``,
    so ``largest`` bounds the memory any single intermediate took.
    """

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in torch.utils._pytree.tree_leaves(out):
            if isinstance(leaf, Tensor):
                self.largest = max(self.largest, leaf.numel())
        return out

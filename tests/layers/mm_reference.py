"""OpenMMLab fixtures (mmcv 2.1.0 blocks): arrays, fill-rule weights, and mmcv -> our keys.

The key mapping here is the test's own, for loading mmcv's weights into our blocks
until ``attnblocks.compat.load_mmcv_state_dict`` carries the same table.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DATA_DIR = Path(__file__).parents[1] / "data" / "mm_reference"

# mmcv key -> ours: its ConvModule wrappers (``g.conv``, ``g.0.conv`` with sub_sample) drop
# out, and its 0-d ``Scale`` becomes our ``gamma`` of shape [1]. ContextBlock keys are ours.
MMCV_KEY_RULES: list[tuple[str, str]] = [
    (r"^(g|phi)\.0\.conv\.", r"\1."),
    (r"^(g|theta|phi|conv_out|concat_project)\.conv\.", r"\1."),
    (r"^gamma\.scale$", "gamma"),
]


@cache
def manifest() -> dict:
    """Per fixture: mmcv's configuration, ``weights_seed`` and ordered ``keys``."""
    return json.loads((DATA_DIR / "manifest.json").read_text())


def load_arrays(name: str) -> dict[str, Tensor]:
    """The arrays of fixture ``name`` as tensors."""
    with np.load(DATA_DIR / f"{name}.npz") as arrays:
        return {key: torch.from_numpy(arrays[key].copy()) for key in arrays.files}


def _fill(leaf: str, z: np.ndarray, shape: list[int]) -> np.ndarray:
    if leaf in ("gamma", "scale"):
        return 0.5 + 0.1 * z
    if leaf == "weight" and len(shape) == 4:
        return z * np.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))
    if leaf == "weight":
        return 1.0 + 0.1 * z
    return 1.0 + 0.1 * np.abs(z) if leaf == "running_var" else 0.1 * z


def mmcv_state_dict(name: str) -> dict[str, Tensor]:
    """Fixture ``name``'s weights in mmcv's layout, by the README's fill rule."""
    entry = manifest()[name]
    rng = np.random.default_rng(entry["weights_seed"])
    state = {}
    for key, shape in entry["keys"]:
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            state[key] = torch.tensor(0)
            continue
        value = _fill(leaf, rng.standard_normal(shape), shape)
        state[key] = torch.from_numpy(np.asarray(value, dtype=np.float32))
    return state


def to_ours(mmcv_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """mmcv's keys renamed (and ``gamma`` reshaped) by :data:`MMCV_KEY_RULES`."""
    ours = {}
    for key, value in mmcv_state.items():
        for pattern, replacement in MMCV_KEY_RULES:
            key = re.sub(pattern, replacement, key)
        ours[key] = value.reshape(1) if key == "gamma" else value
    return ours


def ours_to_mmcv_name(name: str, mmcv_keys: list[str]) -> str:
    """The mmcv key whose renaming gives our parameter ``name`` (to find ``grad.<key>``)."""
    matches = [key for key in mmcv_keys if next(iter(to_ours({key: torch.zeros(1)}))) == name]
    assert len(matches) == 1, (name, matches)
    return matches[0]


def run_fixture(module: torch.nn.Module, arrays: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Forward the fixture's input and backward ``(output * w).sum()`` where the fixture has
    gradients; returns the output and the input (with its ``.grad``)."""
    x = arrays["input"].clone().requires_grad_()
    out = module(x)
    if "grad_input" in arrays:
        (out * arrays["weight_for_loss"]).sum().backward()
    return out, x


def reference_criss_cross(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """mmcv's criss-cross attention (its einsum formulation), without gamma and residual."""
    height = query.shape[2]
    mask = torch.diag(torch.full((height,), float("-inf"), dtype=query.dtype))
    energy_column = torch.einsum("bchw,bciw->bwhi", query, key) + mask
    energy_row = torch.einsum("bchw,bchj->bhwj", query, key)
    attention = torch.cat([energy_column.transpose(1, 2), energy_row], dim=-1).softmax(dim=-1)
    out = torch.einsum("bciw,bhwi->bchw", value, attention[..., :height])
    return out + torch.einsum("bchj,bhwj->bchw", value, attention[..., height:])


def _conv(state: dict[str, Tensor], name: str, maps: Tensor) -> Tensor:
    return F.conv2d(maps, state[f"{name}.weight"], state.get(f"{name}.bias"))


def reference_pairwise(x: Tensor, state: dict[str, Tensor], mode: str, sub_sample: bool,
                       use_scale: bool = True) -> Tensor:  # fmt: skip
    """mmcv's NonLocal2d pairwise matrix ``(B, N, N_k)`` (the N x N matrix), in x's dtype,
    out of place (so that the concatenation mode has gradients), on our key layout."""
    state = {key: value.to(x.dtype) for key, value in state.items()}
    pool = (lambda t: F.max_pool2d(t, 2)) if sub_sample else (lambda t: t)
    if mode == "gaussian":
        theta, phi = x.flatten(2).transpose(1, 2), pool(x).flatten(2)
    else:
        theta = _conv(state, "theta", x).flatten(2).transpose(1, 2)  # (B, N, C')
        phi = pool(_conv(state, "phi", x)).flatten(2)  # (B, C', N_k)
    if mode in ("gaussian", "embedded_gaussian"):
        energy = theta @ phi
        if mode == "embedded_gaussian" and use_scale:
            energy = energy / theta.shape[-1] ** 0.5
        return energy.softmax(dim=-1)
    if mode == "dot_product":
        return theta @ phi / phi.shape[-1]
    inter = theta.shape[-1]
    weight = state["concat_project.weight"].flatten()
    scores = (theta @ weight[:inter])[:, :, None] + (weight[inter:] @ phi)[:, None, :]
    return F.relu(scores) / phi.shape[-1]


def reference_non_local(x: Tensor, state: dict[str, Tensor], mode: str, sub_sample: bool,
                        use_scale: bool = True) -> Tensor:  # fmt: skip
    """mmcv's NonLocal2d forward through :func:`reference_pairwise`."""
    pairwise = reference_pairwise(x, state, mode, sub_sample, use_scale)
    state = {key: value.to(x.dtype) for key, value in state.items()}
    g = _conv(state, "g", x)
    g = (F.max_pool2d(g, 2) if sub_sample else g).flatten(2).transpose(1, 2)  # (B, N_k, C')
    b, _, h, w = x.shape
    y = (pairwise @ g).transpose(1, 2).reshape(b, -1, h, w)
    return x + _conv(state, "conv_out", y)

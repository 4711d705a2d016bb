"""OpenMMLab fixtures (mmcv 2.1.0 blocks): arrays, fill-rule weights in mmcv's layout, and
float64-ready transcriptions of mmcv's forward on this package's key layout.

mmcv's keys reach our blocks through ``attnblocks.compat.load_mmcv_state_dict`` only.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from tests import reference
from tests.reference import MM_DATA_DIR

manifest = partial(reference.manifest, MM_DATA_DIR)  # per fixture: configuration, seed, keys
load_arrays = partial(reference.load_arrays, data_dir=MM_DATA_DIR)


def mmcv_state_dict(name: str) -> dict[str, Tensor]:
    """Fixture ``name``'s weights in mmcv's layout (``gamma.scale``, ``g.conv.weight``...),
    by the README's fill rule."""
    return reference.fill_rule_state_dict(name, MM_DATA_DIR)


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
    """mmcv's NonLocal2d forward through :func:`reference_pairwise`; with ``conv_out.norm.*``
    in ``state``, a BatchNorm2d in eval mode after ``conv_out``."""
    pairwise = reference_pairwise(x, state, mode, sub_sample, use_scale)
    state = {key: value.to(x.dtype) for key, value in state.items()}
    g = _conv(state, "g", x)
    g = (F.max_pool2d(g, 2) if sub_sample else g).flatten(2).transpose(1, 2)  # (B, N_k, C')
    b, _, h, w = x.shape
    y = (pairwise @ g).transpose(1, 2).reshape(b, -1, h, w)
    if "conv_out.norm.running_mean" not in state:
        return x + _conv(state, "conv_out", y)
    norm = [state[f"conv_out.norm.{leaf}"] for leaf in ("running_mean", "running_var", "weight",
                                                         "bias")]  # fmt: skip
    return x + F.batch_norm(_conv(state, "conv_out.conv", y), *norm)  # BatchNorm2d, eval mode

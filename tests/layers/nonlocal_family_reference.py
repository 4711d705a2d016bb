"""Independent transcriptions of mmseg 1.2.2's DNL block and PSA attention, and mmcv's
PSAMask loops, for float64 references on this package's key layout.

- :func:`mmcv_psamask` / :func:`mmcv_psamask_backward`: ``psamask_{collect,distribute}_
  {forward,backward}`` of ``mmcv/ops/csrc/pytorch/cpu/psamask.cpp``, loop by loop on flat
  buffers with the same index arithmetic.
- :func:`reference_dnl`: ``DisentangledNonLocal2d.forward`` of mmseg's ``dnl_head.py``
  (the N x N pairwise matrix, out of place).
- :func:`reference_psa`: ``PSAHead.forward`` of mmseg's ``psa_head.py`` up to ``proj`` and
  the resize back (what :class:`attnblocks.PointwiseSpatialAttention` computes), with
  :func:`mmcv_psamask` for the op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _psamask_pairs(psa_type: str, n: int, hf: int, wf: int, hm: int, wm: int):
    """(mask index, buffer index) pairs of mmcv's loops, in its order."""
    half_h, half_w = (hm - 1) // 2, (wm - 1) // 2
    for b in range(n):
        for h in range(hf):
            for w in range(wf):
                for hidx in range(max(0, half_h - h), min(hm, hf + half_h - h)):
                    for widx in range(max(0, half_w - w), min(wm, wf + half_w - w)):
                        mask = ((b * hm * wm + hidx * wm + widx) * hf + h) * wf + w
                        row, col = hidx + h - half_h, widx + w - half_w
                        if psa_type == "collect":
                            buffer = (b * hf * wf + row * wf + col) * hf * wf + h * wf + w
                        else:
                            buffer = (b * hf * wf + h * wf + w) * hf * wf + row * wf + col
                        yield mask, buffer


def mmcv_psamask(x: Tensor, psa_type: str, mask_size: tuple[int, int]) -> Tensor:
    """mmcv's PSAMask forward: ``(B, h_m * w_m, H, W) -> (B, H * W, H, W)``, zeros elsewhere.

    Differentiable (an index copy: its autograd is the op's backward)."""
    n, _, hf, wf = x.shape
    pairs = list(_psamask_pairs(psa_type, n, hf, wf, *mask_size))
    source = torch.tensor([m for m, _ in pairs], dtype=torch.long)
    target = torch.tensor([b for _, b in pairs], dtype=torch.long)
    out = x.new_zeros(n * (hf * wf) ** 2).index_put((target,), x.reshape(-1)[source])
    return out.reshape(n, hf * wf, hf, wf)


def mmcv_psamask_backward(grad_out: Tensor, psa_type: str, mask_size: tuple[int, int]) -> Tensor:
    """mmcv's PSAMask backward: the gradient of its input, written by its loops."""
    n, _, hf, wf = grad_out.shape
    flat_grad = grad_out.reshape(-1).tolist()
    grad_in = [0.0] * (n * mask_size[0] * mask_size[1] * hf * wf)
    for mask, buffer in _psamask_pairs(psa_type, n, hf, wf, *mask_size):
        grad_in[mask] = flat_grad[buffer]
    return torch.tensor(grad_in, dtype=grad_out.dtype).reshape(n, -1, hf, wf)


def _conv(state: dict[str, Tensor], name: str, maps: Tensor, padding: int = 0) -> Tensor:
    return F.conv2d(maps, state[f"{name}.weight"], state.get(f"{name}.bias"), padding=padding)


def _batch_norm(state: dict[str, Tensor], name: str, maps: Tensor) -> Tensor:
    """BatchNorm2d in eval mode (mmcv's ConvModule ``bn``, our ``norm``)."""
    leaves = [state[f"{name}.{leaf}"] for leaf in ("running_mean", "running_var", "weight", "bias")]
    return F.batch_norm(maps, *leaves)


def reference_dnl(x: Tensor, state: dict[str, Tensor], mode: str = "embedded_gaussian",
                  temperature: float = 0.05, use_scale: bool = True) -> Tensor:  # fmt: skip
    """mmseg's DisentangledNonLocal2d forward in x's dtype; a BatchNorm2d (eval mode) after
    ``conv_out`` when ``state`` has ``conv_out.norm.*``."""
    state = {key: value.to(x.dtype) for key, value in state.items()}
    n, _, h, w = x.shape
    g_x = _conv(state, "g", x).reshape(n, -1, h * w).permute(0, 2, 1)  # (N, HxW, C')
    theta_x = _conv(state, "theta", x).reshape(n, -1, h * w).permute(0, 2, 1)
    phi_x = _conv(state, "phi", x).reshape(n, -1, h * w)  # (N, C', HxW)
    theta_x = theta_x - theta_x.mean(dim=-2, keepdim=True)
    phi_x = phi_x - phi_x.mean(dim=-1, keepdim=True)
    pairwise = torch.matmul(theta_x, phi_x)
    if mode == "embedded_gaussian":
        if use_scale:
            pairwise = pairwise / theta_x.shape[-1] ** 0.5
        pairwise = (pairwise / temperature).softmax(dim=-1)
    else:  # mmcv's dot_product
        pairwise = pairwise / pairwise.shape[-1]
    y = torch.matmul(pairwise, g_x).permute(0, 2, 1).reshape(n, -1, h, w)
    unary_mask = _conv(state, "conv_mask", x).reshape(n, 1, -1).softmax(dim=-1)
    unary_x = torch.matmul(unary_mask, g_x).permute(0, 2, 1).reshape(n, -1, 1, 1)
    if "conv_out.norm.running_mean" not in state:
        return x + _conv(state, "conv_out", y + unary_x)
    return x + _batch_norm(state, "conv_out.norm", _conv(state, "conv_out.conv", y + unary_x))


def _conv_module(state: dict[str, Tensor], name: str, maps: Tensor, padding: int = 0) -> Tensor:
    """mmcv's ConvModule: conv (no bias), BN (eval), ReLU; our ``conv``/``norm`` keys."""
    return _batch_norm(state, f"{name}.norm", _conv(state, f"{name}.conv", maps, padding)).relu()


def reference_psa(x: Tensor, state: dict[str, Tensor], mask_size: tuple[int, int],
                  psa_type: str = "bi-direction", shrink_factor: int = 2, compact: bool = False,
                  normalization_factor: float | None = 1.0, psa_softmax: bool = True,
                  align_corners: bool = False) -> Tensor:  # fmt: skip
    """mmseg's PSAHead forward from ``identity = x`` to the resize after ``proj``, in x's dtype."""
    state = {key: value.to(x.dtype) for key, value in state.items()}
    if normalization_factor is None:  # PSAHead.__init__
        normalization_factor = mask_size[0] * mask_size[1]

    def attention(prefix: str, maps: Tensor) -> Tensor:
        return _conv(state, f"{prefix}.1", _conv_module(state, f"{prefix}.0", maps))

    def shrink(maps: Tensor) -> tuple[Tensor, bool]:
        h, w = maps.shape[-2:]
        if shrink_factor == 1:
            return maps, align_corners
        if h % shrink_factor and w % shrink_factor:
            h, w, align = (h - 1) // shrink_factor + 1, (w - 1) // shrink_factor + 1, True
        else:
            h, w, align = h // shrink_factor, w // shrink_factor, False
        return F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=align), align

    def aggregate(maps: Tensor, y: Tensor) -> Tensor:
        n, c, h, w = maps.shape
        if psa_softmax:
            y = F.softmax(y, dim=1)
        out = torch.bmm(maps.reshape(n, c, h * w), y.reshape(n, h * w, h * w))
        return out.reshape(n, c, h, w) * (1.0 / normalization_factor)

    def transposed(y: Tensor) -> Tensor:
        n, _, h, w = y.shape
        return y.reshape(n, h * w, h * w).transpose(1, 2).reshape(n, h * w, h, w)

    if psa_type in ("collect", "distribute"):
        out, align = shrink(_conv_module(state, "reduce", x))
        y = attention("mask", out)
        if compact:
            y = transposed(y) if psa_type == "collect" else y
        else:
            y = mmcv_psamask(y, psa_type, mask_size)
        out = aggregate(out, y)
    else:
        x_col, align = shrink(_conv_module(state, "reduce", x))
        x_dis, _ = shrink(_conv_module(state, "reduce_p", x))
        y_col, y_dis = attention("mask", x_col), attention("mask_p", x_dis)
        if compact:
            y_dis = transposed(y_dis)
        else:
            y_col = mmcv_psamask(y_col, "collect", mask_size)
            y_dis = mmcv_psamask(y_dis, "distribute", mask_size)
        out = torch.cat([aggregate(x_col, y_col), aggregate(x_dis, y_dis)], 1)
    out = _conv_module(state, "proj", out, padding=1)
    return F.interpolate(out, size=x.shape[2:], mode="bilinear", align_corners=align)

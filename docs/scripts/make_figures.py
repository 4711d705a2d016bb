"""Draw every picture of the documentation site from real computations, into docs/images/.

    pip install -e ".[docs]"           # matplotlib, scikit-image (the photograph)
    python docs/scripts/make_figures.py

1. ``blocks-*.png``: what each block attends to, computed by the block itself on a
   photograph that scikit-image ships (``skimage.data.astronaut()``, NASA, public
   domain). The blocks get hand-set projections instead of trained ones, so that the
   picture says what the *mechanism* does: queries and keys compare the pixels' colours
   (CIELAB), with ``q_i . k_j = -t |lab_i - lab_j|^2`` up to a per-row constant, so a
   softmax over keys favours pixels of similar colour. The same weights go into PAM,
   criss-cross and non-local, so their pictures differ only by the mechanism; DNL, ISA,
   EMA, PSA and OCR get the settings their own mechanism needs, said in each caption.
2. ``heads-*.svg``: the model heads as diagrams (boxes and arrows drawn with matplotlib;
   the layout is checked for overlapping boxes and text wider than its box).
3. ``demo-*.png``: a DANet trained on the synthetic scenes of ``examples/train.py``: a
   shorter run of the demo (``--iters``, default 600 of the demo's 2000, the rest of the
   recipe unchanged), its PAM maps for chosen pixels, its CAM channels, and the same learned
   query/key projections in a criss-cross and a non-local block; then the same model on
   the photograph. The run goes to ``runs/docs-figures/danet`` and is reused when its
   checkpoint exists (``--retrain`` to train again).

Deterministic given the run: the run is (examples/train.py seeds everything).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the checkout's attnblocks and examples

from attnblocks import (  # noqa: E402
    CAM,
    PAM,
    ContextBlock,
    CrissCrossAttention,
    DisentangledNonLocal2d,
    ExpectationMaximizationAttention,
    InterlacedSparseSelfAttention,
    NonLocal2d,
    ObjectContextBlock,
    PointwiseSpatialAttention,
    SpatialGather,
)

IMAGES = ROOT / "docs" / "images"
RUN = ROOT / "runs" / "docs-figures" / "danet"
POINT_COLOURS = ("#ff2d2d", "#2dd4ff", "#ffd22d", "#b24dff")
DPI = 80  # modest PNGs: the site shows them at about this size
plt.rcParams.update({"font.size": 8, "svg.fonttype": "none"})  # SVG text stays text


def save(fig: plt.Figure, name: str) -> None:
    path = IMAGES / name
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KiB")


def mark(ax: plt.Axes, points: list[tuple[int, int]], first: int = 0) -> None:
    """Dots on the query pixels, in the colours of points ``first``, ``first + 1``..."""
    for index, (row, col) in enumerate(points):
        colour = POINT_COLOURS[(first + index) % len(POINT_COLOURS)]
        ax.plot(col, row, "o", ms=6, color=colour, mec="black")


# ---------------------------------------------------------------- 1. the blocks on a photograph


def photograph(size: int = 64) -> tuple[np.ndarray, Tensor]:
    """The astronaut photograph at ``size`` x ``size``: RGB for drawing, colour features."""
    from skimage import color, data, transform

    rgb = transform.resize(data.astronaut(), (size, size), anti_aliasing=True)  # floats in 0..1
    lab = torch.from_numpy(color.rgb2lab(rgb)).float().permute(2, 0, 1)  # (3, H, W)
    lab = (lab - lab.mean((1, 2), keepdim=True)) / lab.std()  # one scale for the three
    return rgb, lab


def colour_features(lab: Tensor, channels: int = 32) -> Tensor:
    """``(1, channels, H, W)``: the Lab colour, its squared norm, zeros for the rest."""
    x = torch.zeros(1, channels, *lab.shape[1:])
    x[0, :3] = lab
    x[0, 3] = lab.pow(2).sum(0)
    return x


def colour_similarity(query: nn.Conv2d, key: nn.Conv2d, temperature: float) -> None:
    """Set 1x1 query/key convs (4 output channels) to compare colours.

    ``q_i = [2t lab_i, 1]``, ``k_j = [lab_j, -t |lab_j|^2]``, so ``q_i . k_j =
    -t |lab_i - lab_j|^2 + t |lab_i|^2``: the last term is the same for every key of a
    query and cancels in the softmax over keys.
    """
    with torch.no_grad():
        for conv in (query, key):
            conv.weight.zero_()
            conv.bias.zero_()
        for c in range(3):
            query.weight[c, c] = 2 * temperature
            key.weight[c, c] = 1.0
        query.bias[3] = 1.0
        key.weight[3, 3] = -temperature


def draw_block_maps(
    name: str, title: str, rgb: np.ndarray, maps: Tensor, points, labels, log: bool = False
) -> None:
    """The photograph with its query points, then one attention map per point.

    ``points`` may repeat (several maps of one point); ``log`` draws the maps on a log
    scale (where most weight sits on a few pixels and the rest would look black).
    """
    count = maps.shape[0]
    distinct = list(dict.fromkeys(points))
    fig, axes = plt.subplots(1, count + 1, figsize=(2.0 * (count + 1), 2.3))
    axes[0].imshow(rgb)
    mark(axes[0], distinct)
    axes[0].set_title("photograph, query pixels")
    for index, ax in enumerate(axes[1:]):
        ax.imshow(rgb, alpha=0.35)
        shown = maps[index].clamp_min(1e-8).log10() if log else maps[index]
        ax.imshow(shown.numpy(), cmap="magma", alpha=0.75)
        if index < len(points):
            mark(ax, [points[index]], first=distinct.index(points[index]))
        ax.set_title(labels[index])
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    save(fig, name)


def block_figures() -> None:
    rgb, lab = photograph()
    x = colour_features(lab)
    points = [(14, 30), (40, 8), (56, 40)]  # helmet/face, flag/background, suit
    labels = [f"point {i + 1}" for i in range(len(points))]
    temperature = 2.0

    pam = PAM(32, reduction=8)  # query/key width 32 // 8 = 4
    colour_similarity(pam.query_conv, pam.key_conv, temperature)
    draw_block_maps(
        "blocks-pam.png",
        "PAM: each query pixel's softmax over all H x W positions (colour-similarity weights)",
        rgb, pam.attention_map(x, points)[0], points, labels,
    )  # fmt: skip

    cca = CrissCrossAttention(32, reduction=8)
    colour_similarity(cca.query_conv, cca.key_conv, temperature)
    one = cca.attention_map(x, points)[0]
    # two passes (CCNet's recurrence 2) reach every pixel: the second pass's weights on
    # the first's, i.e. the product of two criss-cross attention matrices, for one query
    two = torch.stack([_two_pass_reach(cca, x, p) for p in points])
    draw_block_maps(
        "blocks-criss-cross.png",
        "Criss-cross: one pass sees its row and column; two passes (recurrence 2) reach every "
        "pixel (log scale)",
        rgb, torch.cat([one, two]), points + points,
        [f"point {i + 1}, {n}" for n in ("one pass", "two passes") for i in range(3)],
        log=True,
    )  # fmt: skip

    modes = []
    for mode in ("embedded_gaussian", "gaussian", "dot_product", "concatenation"):
        block = NonLocal2d(32, reduction=8, mode=mode, use_scale=False)
        if mode in ("embedded_gaussian", "dot_product"):
            colour_similarity(block.theta, block.phi, temperature)
        elif mode == "concatenation":
            with torch.no_grad():  # scores a_i + b_j from the colour, ReLU'd: brightness pairs
                for conv in (block.theta, block.phi):
                    conv.weight.zero_()
                    conv.bias.zero_()
                    conv.weight[:, 0] = 1.0  # lightness L into every inter channel
                block.concat_project.weight.fill_(1.0)  # a_i + b_j: the two lightnesses
        maps = block.attention_map(x, points[:1])[0, 0]
        modes.append((mode, maps / maps.abs().max()))
    fig, axes = plt.subplots(1, 5, figsize=(10, 2.3))
    axes[0].imshow(rgb)
    mark(axes[0], points[:1])
    axes[0].set_title("photograph, query pixel")
    for ax, (mode, maps) in zip(axes[1:], modes):
        ax.imshow(rgb, alpha=0.35)
        ax.imshow(maps.numpy(), cmap="magma", alpha=0.75)
        mark(ax, points[:1])
        ax.set_title(mode.replace("_", " "))
    for ax in axes:
        ax.axis("off")
    fig.suptitle("Non-local: the pairwise function f(i, j) of one query pixel, four modes "
                 "(scaled to their maximum)", fontsize=9)  # fmt: skip
    save(fig, "blocks-non-local.png")

    gc = ContextBlock(32, pooling="att")
    with torch.no_grad():  # the context's weights favour the reddest pixels (Lab a*)
        gc.conv_mask.weight.zero_()
        gc.conv_mask.weight[0, 1] = 4.0
    shared = gc.attention_map(x, points)[0, :1]
    draw_block_maps(
        "blocks-context.png",
        "Global context: one softmax over positions, shared by every query pixel",
        rgb, shared, [], ["the one context map"],
    )  # fmt: skip

    names = ["L", "a", "b", "|lab|^2", *[f"edge {i}" for i in range(4)]]
    features = x.clone()
    gray = lab[:1][None]
    kernels = torch.tensor(
        [[[-1.0, 0, 1]] * 3, [[-1.0] * 3, [0] * 3, [1.0] * 3],
         [[0, 1.0, 1], [-1, 0, 1], [-1, -1, 0]], [[1.0, 1, 0], [1, 0, -1], [0, -1, -1]]]
    )[:, None]  # fmt: skip
    features[0, 4:8] = F.conv2d(gray, kernels, padding=1)[0]
    features = features[:, :8]
    # each map standardised to unit norm, times 2: E = X X^T = 4 x the maps' correlations
    centred = features - features.mean((2, 3), keepdim=True)
    features = 2 * centred / centred.flatten(2).norm(dim=2)[..., None, None]
    weights = CAM(8).attention_weights(features)[0]  # (8, 8), rows sum to 1
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.8))
    axes[0].imshow(weights.numpy(), cmap="viridis")
    axes[0].set_xticks(range(8), names, rotation=60)
    axes[0].set_yticks(range(8), names)
    axes[0].set_title("CAM weights (rows sum to 1)")
    paper = CAM(8, mode="paper").attention_weights(features)[0]
    axes[1].imshow(paper.numpy(), cmap="viridis")
    axes[1].set_xticks(range(8), names, rotation=60)
    axes[1].set_yticks([])
    axes[1].set_title('mode="paper": softmax(E)')
    fig.suptitle(
        "CAM on 8 feature maps of the photograph: the default (the authors') "
        "softmax(rowmax(E) - E) favours the least similar channels",
        fontsize=8,
        y=1.06,
    )
    save(fig, "blocks-cam.png")

    dnl_figure(rgb, x, points, labels)
    isa_figure(rgb, x, points, labels)
    ema_figure(rgb, x, points, labels)
    psa_figure(rgb, x, points, labels)
    ocr_figure(rgb, x, points, labels)


def dnl_figure(rgb: np.ndarray, x: Tensor, points, labels) -> None:
    """DNL's two terms: the whitened pairwise map of each point, and the one unary map.

    ``theta``/``phi`` get the colour-similarity weights; whitening removes their means
    over the positions, which leaves ``2t (lab_i - mean) . (lab_j - mean)`` (the key's
    ``-t |lab_j|^2``, a per-key term, goes with the mean), times the block's ``s / T``.
    ``conv_mask`` is set to the Lab a* channel, as the global-context picture's mask.
    """
    block = DisentangledNonLocal2d(32, reduction=8)  # T = 0.05, s = 1 / sqrt(4): x10
    colour_similarity(block.theta, block.phi, temperature=0.5)
    with torch.no_grad():
        block.conv_mask.weight.zero_()
        block.conv_mask.bias.zero_()
        block.conv_mask.weight[0, 1] = 4.0
    pairwise = block.attention_map(x, points, term="pairwise")[0]
    unary = block.attention_map(x, points[:1], term="unary")[0]
    draw_block_maps(
        "blocks-dnl.png",
        "Disentangled non-local: the whitened pairwise term of each point, and the unary "
        "term every point shares (log scale)",
        rgb, torch.cat([pairwise, unary]), points,
        [f"{label}, pairwise" for label in labels] + ["unary (all points)"],
        log=True,
    )  # fmt: skip


def isa_figure(rgb: np.ndarray, x: Tensor, points, labels) -> None:
    """ISA's two sparse maps of each point, and where the point's output comes from.

    The relations get no norm and no activation (``nn.Identity``), colour-comparing
    queries and keys, and identity value and output projections, so each relation
    averages the colour features with its softmax weights and the long-range relation's
    output, colours averaged over the interlaced group, is what the short-range relation
    compares. Through identity projections the whole block is linear in the values:
    pixel ``p`` receives ``sum_q short_p(q) long_q(j)`` of pixel ``j``'s features, ``q``
    over ``p``'s local group.
    """
    features = x.clone()
    features[0, 4] = 1.0  # a constant channel: the projections here have no bias
    block = InterlacedSparseSelfAttention(
        32, key_channels=4, down_factor=(8, 8), norm_layer=nn.Identity, act_layer=nn.Identity
    )
    temperature = 4.0  # energies scaled by 1 / sqrt(4): PAM's picture's 2
    with torch.no_grad():
        for relation in (block.global_relation, block.local_relation):
            (query_in, query_out), (key_in, key_out) = relation.query_project, relation.key_project
            for conv in (query_in.conv, key_in.conv):
                conv.weight.zero_()
            for conv in (query_out.conv, key_out.conv):
                conv.weight.copy_(torch.eye(4)[..., None, None])
            for c in range(3):
                query_in.conv.weight[c, c] = 2 * temperature
                key_in.conv.weight[c, c] = 1.0
            query_in.conv.weight[3, 4] = 1.0  # the constant
            key_in.conv.weight[3, 3] = -temperature  # |lab|^2
            relation.value_project.weight.copy_(torch.eye(32)[..., None, None])
            relation.value_project.bias.zero_()
            relation.output_project.conv.weight.copy_(torch.eye(32)[..., None, None])
    maps = block.attention_map(features, points)  # 64 x 64: no padding
    reach = []
    for row, col in points:
        top, left = row - row % 8, col - col % 8
        group = [(top + r, left + c) for r in range(8) for c in range(8)]
        short = maps.short_range[0, points.index((row, col))][top : top + 8, left : left + 8]
        long_maps = block.attention_map(features, group).long_range[0]  # (64, H, W)
        reach.append(torch.einsum("q,qhw->hw", short.flatten(), long_maps))
    columns = [("long range", maps.long_range[0]), ("short range", maps.short_range[0]),
               ("both steps", torch.stack(reach))]  # fmt: skip
    fig, axes = plt.subplots(len(points), 4, figsize=(9.6, 2.5 * len(points)))
    for index, point in enumerate(points):
        axes[index, 0].imshow(rgb)
        mark(axes[index, 0], [point], first=index)
        axes[index, 0].set_title(labels[index])
        for ax, (title, stack) in zip(axes[index, 1:], columns):
            shown = stack[index].clamp_min(1e-5).log10()  # zero (outside the group): black
            ax.imshow(rgb, alpha=0.35)
            ax.imshow(shown.numpy(), cmap="magma", alpha=0.8, interpolation="nearest")
            mark(ax, [point], first=index)
            ax.set_title(title)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("Interlaced sparse self-attention: a long-range step, then a short-range "
                 "step, reach every pixel (log scales)", fontsize=9)  # fmt: skip
    save(fig, "blocks-isa.png")


def ema_figure(rgb: np.ndarray, x: Tensor, points, labels, bases: int = 4) -> None:
    """EMA's responsibilities: how much each pixel belongs to each base after the EM steps.

    ``in_conv`` keeps the Lab colour (times 3, so that the softmax over bases is not flat)
    and drops the other channels; the initial bases are the block's own random
    initialisation under a fixed seed. ``attention_map`` of every pixel returns the last
    E step's responsibilities.
    """
    with torch.random.fork_rng():
        torch.manual_seed(0)
        block = ExpectationMaximizationAttention(32, num_bases=bases, num_stages=3).eval()
    with torch.no_grad():
        block.in_conv.weight.zero_()
        block.in_conv.bias.zero_()
        for c in range(3):
            block.in_conv.weight[c, c] = 3.0
    height, width = x.shape[-2:]
    every = [(r, c) for r in range(height) for c in range(width)]
    responsibilities = block.attention_map(x, every)[0].T.reshape(bases, height, width)
    fig, axes = plt.subplots(1, bases + 2, figsize=(2.0 * (bases + 2), 2.3))
    axes[0].imshow(rgb)
    axes[0].set_title("photograph")
    for k, ax in enumerate(axes[1 : bases + 1]):
        ax.imshow(responsibilities[k].numpy(), cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"base {k + 1}")
    palette = plt.get_cmap("tab10")(np.arange(bases))[:, :3]
    axes[-1].imshow(palette[responsibilities.argmax(0).numpy()])
    axes[-1].set_title("each pixel's largest")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"Expectation-maximisation attention: the responsibilities of {bases} bases "
                 "after 3 EM steps (each pixel's sum to 1)", fontsize=9)  # fmt: skip
    save(fig, "blocks-ema.png")


def psa_figure(rgb: np.ndarray, x: Tensor, points, labels) -> None:
    """PSA's collect and distribute weights of a few pixels, with hand-set mask predictors.

    Every pixel predicts its own mask, a blob centred on itself whose logits fall with
    the squared distance ``d^2`` of the mask cell from its centre, as ``-d^2 (a + b L)``:
    the pixel's lightness ``L`` sets how far it reaches (bright pixels: narrow masks,
    dark pixels: wide ones). Norms and activations are ``nn.Identity``, ``reduce`` keeps
    a constant channel and ``L``; the mask covers the whole shrunk map from any pixel
    (``2 h - 1`` cells a side, as mmseg's releases).
    """
    features = x.clone()
    features[0, 4] = 1.0  # a constant channel for the mask's a
    grid = 32  # 64 // shrink_factor
    size = 2 * grid - 1
    block = PointwiseSpatialAttention(
        32, mask_size=size, inter_channels=2, shrink_factor=2, norm_layer=nn.Identity,
        act_layer=nn.Identity,
    )  # fmt: skip
    offsets = torch.arange(size) - (size - 1) // 2
    distance = (offsets[:, None] ** 2 + offsets[None, :] ** 2).flatten().float()  # cell order
    with torch.no_grad():
        for reduce, mask in ((block.reduce, block.mask), (block.reduce_p, block.mask_p)):
            reduce.conv.weight.zero_()
            reduce.conv.weight[0, 4] = 1.0  # the constant
            reduce.conv.weight[1, 0] = 1.0  # lightness L (standardised)
            mask[0].conv.weight.copy_(torch.eye(2)[..., None, None])
            mask[1].weight.copy_(-distance[:, None, None, None] * torch.tensor([0.02, 0.008])[
                None, :, None, None])  # fmt: skip
    shrunk = [(row // 2, col // 2) for row, col in points]
    maps = [block.attention_map(features, shrunk, direction)[0] for direction in block.directions]
    fig, axes = plt.subplots(2, len(points) + 1, figsize=(2.0 * (len(points) + 1), 4.4))
    small = rgb[::2, ::2]
    for row_axes, direction, stack in zip(axes, block.directions, maps):
        row_axes[0].imshow(small)
        mark(row_axes[0], shrunk)
        row_axes[0].set_title("photograph (32 x 32)")
        for index, ax in enumerate(row_axes[1:]):
            ax.imshow(small, alpha=0.35)
            ax.imshow(stack[index].numpy(), cmap="magma", alpha=0.75)
            mark(ax, [shrunk[index]], first=index)
            ax.set_title(f"{labels[index]}, {direction}")
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("Point-wise spatial attention: what each point gathers (collect, from its own "
                 "mask) and receives (distribute, from the others' masks)", fontsize=9)  # fmt: skip
    save(fig, "blocks-psa.png")


def ocr_figure(rgb: np.ndarray, x: Tensor, points, labels) -> None:
    """OCR: soft regions from a hand-made coarse prediction, then each pixel's attention
    over the regions (``ObjectContextBlock.region_attention``).

    The coarse logits of region ``k`` are ``-|lab - lab(p_k)|^2``, the colour distance to
    one chosen pixel ``p_k``; ``SpatialGather`` averages the features under each region.
    The object-context block has no norm and no activation (``nn.Identity``) and
    colour-comparing queries and keys (a constant channel stands in for the bias).
    """
    features = x.clone()
    features[0, 4] = 1.0
    seeds = [*points, (4, 4)]  # the three points and the sky above the flag
    lab = features[0, :3]
    centres = torch.stack([lab[:, row, col] for row, col in seeds])  # (K, 3)
    logits = -(lab[None] - centres[:, :, None, None]).pow(2).sum(1)[None]  # (1, K, H, W)
    regions = SpatialGather()(features, logits)  # (1, 32, K, 1)
    block = ObjectContextBlock(32, inter_channels=4, norm_layer=nn.Identity,
                               act_layer=nn.Identity)  # fmt: skip
    temperature = 4.0  # energies scaled by 1 / sqrt(4)
    with torch.no_grad():
        (query_in, query_out) = block.attention.query_project
        (key_in, key_out) = block.attention.key_project
        for unit in (query_in, key_in):
            unit.conv.weight.zero_()
        for unit in (query_out, key_out):
            unit.conv.weight.copy_(torch.eye(4)[..., None, None])
        for c in range(3):
            query_in.conv.weight[c, c] = 2 * temperature
            key_in.conv.weight[c, c] = 1.0
        query_in.conv.weight[3, 4] = 1.0
        key_in.conv.weight[3, 3] = -temperature
    weights = block.region_attention(features, regions)[0]  # (K, H, W), sums to 1 over K
    count = len(seeds)
    fig, axes = plt.subplots(1, count + 2, figsize=(2.0 * (count + 2), 2.3))
    axes[0].imshow(rgb)
    mark(axes[0], seeds)
    axes[0].set_title("region seeds")
    for k, ax in enumerate(axes[1 : count + 1]):
        ax.imshow(rgb, alpha=0.35)
        ax.imshow(weights[k].numpy(), cmap="magma", alpha=0.75, vmin=0, vmax=1)
        mark(ax, [seeds[k]], first=k)
        ax.set_title(f"attention to region {k + 1}")
    palette = np.array([matplotlib.colors.to_rgb(c) for c in POINT_COLOURS])
    axes[-1].imshow(palette[weights.argmax(0).numpy()])
    axes[-1].set_title("each pixel's largest")
    for ax in axes:
        ax.axis("off")
    fig.suptitle("Object-contextual representations: every pixel's softmax over 4 soft "
                 "regions (the four maps sum to 1 at each pixel)", fontsize=9)  # fmt: skip
    save(fig, "blocks-ocr.png")


def _two_pass_reach(cca: CrissCrossAttention, x: Tensor, point: tuple[int, int]) -> Tensor:
    """How much each pixel contributes to ``point`` after two criss-cross passes.

    The first pass's weights of every pixel (``A1``, rows and columns only), then the
    second pass's weights of ``point`` over the first pass's outputs: ``a2 @ A1``. Both
    passes use the same input's attention, a picture of the reach rather than of a
    trained CCNet (whose second pass sees the first pass's output).
    """
    height, width = x.shape[-2:]
    every = [(r, c) for r in range(height) for c in range(width)]
    first = cca.attention_map(x, every)[0].reshape(height * width, height * width)
    second = cca.attention_map(x, [point])[0, 0].reshape(1, height * width)
    return (second @ first).reshape(height, width)


# ---------------------------------------------------------------- 2. the heads as diagrams


def diagram(name: str, boxes: dict, arrows: list, size: tuple[float, float], title: str) -> None:
    """Boxes ``{key: (x, y, text, colour[, width[, height]])}`` (inches; 2 x 0.4 unless
    given) joined by ``arrows`` ``(from, to[, label[, side]])``.

    An arrow leaves a box at its bottom and enters the next at its top, or goes side to
    side between boxes on one row. With ``side`` (inches; negative: left, positive:
    right) it leaves the first box's side, runs that far beyond the outer edge of every
    box on the rows from the first to the second, and turns back into the second box's
    side: a skip connection past the boxes between them. Raises ``ValueError`` where
    boxes overlap or a text does not fit in its box.
    """
    fig, ax = plt.subplots(figsize=size)
    ax.set_xlim(0, size[0])
    ax.set_ylim(0, size[1])
    ax.axis("off")
    shapes = {}  # key: (x, y, half width, half height)
    texts = {}
    for key, (x, y, text, colour, *extent) in boxes.items():
        half_width = (extent[0] if extent else 2.0) / 2
        half_height = (extent[1] if len(extent) > 1 else 0.4) / 2
        shapes[key] = (x, y, half_width, half_height)
        ax.add_patch(FancyBboxPatch((x - half_width, y - half_height), 2 * half_width,
                                    2 * half_height, boxstyle="round,pad=0.03", fc=colour,
                                    ec="#333333", lw=0.8))  # fmt: skip
        texts[key] = ax.text(x, y, text, ha="center", va="center", fontsize=7)
    for arrow in arrows:
        (x0, y0, w0, h0), (x1, y1, w1, h1) = shapes[arrow[0]], shapes[arrow[1]]
        side = arrow[3] if len(arrow) > 3 else None
        if side is not None:  # around the boxes between: out of a side, down, back in
            low, high = sorted((y0, y1))
            passed = [shape for shape in shapes.values() if low <= shape[1] <= high]
            if side < 0:
                edge = min(x - w for x, _, w, _ in passed) + side
                start, end = (x0 - w0, y0), (x1 - w1, y1)
            else:
                edge = max(x + w for x, _, w, _ in passed) + side
                start, end = (x0 + w0, y0), (x1 + w1, y1)
            ax.plot([start[0], edge, edge], [y0, y0, y1], color="#333333", lw=0.8)
            ax.add_patch(FancyArrowPatch((edge, y1), end, arrowstyle="-|>", mutation_scale=8,
                                         lw=0.8, color="#333333", shrinkA=0))  # fmt: skip
            if len(arrow) > 2 and arrow[2]:
                ax.text(edge + (-0.05 if side < 0 else 0.05), (y0 + y1) / 2, arrow[2],
                        fontsize=6, color="#555555", va="center", rotation=90,
                        ha="right" if side < 0 else "left")  # fmt: skip
            continue
        if abs(y1 - y0) < 0.1:  # same row: side to side
            start = (x0 + (w0 if x1 > x0 else -w0), y0)
            end = (x1 - (w1 if x1 > x0 else -w1), y1)
        else:
            start, end = (x0, y0 - h0), (x1, y1 + h1)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=8, lw=0.8,
                                     color="#333333"))  # fmt: skip
        if len(arrow) > 2 and arrow[2]:  # beside a vertical arrow, above the others
            x, y = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
            if abs(y1 - y0) < 0.1:  # horizontal: above the boxes' tops
                ax.text(x, y + max(0.3, h0 + 0.1, h1 + 0.1), arrow[2], fontsize=6,
                        color="#555555", va="center", ha="center")  # fmt: skip
            elif abs(x1 - x0) < 0.1:  # vertical: to its right
                ax.text(x + 0.05, y, arrow[2], fontsize=6, color="#555555", va="center",
                        ha="left")  # fmt: skip
            else:  # slanted: on the side the line leaves free above its middle
                right = x1 > x0
                ax.text(x + (0.05 if right else -0.05), y + 0.03, arrow[2], fontsize=6,
                        color="#555555", va="bottom", ha="left" if right else "right")  # fmt: skip
    ax.set_title(title, fontsize=8)
    _check_layout(fig, ax, shapes, texts, name)
    path = IMAGES / name
    # the same file on every run: no date, and clip-path ids from a fixed salt, not a random one
    with plt.rc_context({"svg.hashsalt": name}):
        fig.savefig(path, bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KiB")


def _check_layout(fig: plt.Figure, ax: plt.Axes, shapes: dict, texts: dict, name: str) -> None:
    """Refuse a diagram whose boxes overlap or whose texts overflow their boxes."""
    keys = list(shapes)
    for i, a in enumerate(keys):
        xa, ya, wa, ha = shapes[a]
        for b in keys[i + 1 :]:
            xb, yb, wb, hb = shapes[b]
            if abs(xa - xb) < wa + wb + 0.1 and abs(ya - yb) < ha + hb + 0.1:
                raise ValueError(f"{name}: boxes {a!r} and {b!r} overlap")
    renderer = fig.canvas.get_renderer()
    to_inches = ax.transData.inverted()
    for key, text in texts.items():
        (left, bottom), (right, top) = to_inches.transform(text.get_window_extent(renderer))
        _, _, half_width, half_height = shapes[key]
        if right - left > 2 * half_width or top - bottom > 2 * half_height + 0.06:
            size = f"{right - left:.2f} x {top - bottom:.2f} in"
            raise ValueError(f"{name}: the text of box {key!r} ({size}) does not fit its box")


def head_figures() -> None:
    blue, green, orange, grey = "#dbe7ff", "#d9f2d9", "#ffe3c2", "#eeeeee"
    diagram(
        "heads-danet.svg",
        {
            "in": (3.3, 5.2, "backbone features C (stride 8)", grey),
            "pin": (1.8, 4.4, "3x3 conv-BN-ReLU -> C/4", blue),
            "cin": (4.8, 4.4, "3x3 conv-BN-ReLU -> C/4", blue),
            "pam": (1.8, 3.6, "PAM (positions)", orange),
            "cam": (4.8, 3.6, "CAM (channels)", orange),
            "pout": (1.8, 2.8, "3x3 conv-BN-ReLU", blue),
            "cout": (4.8, 2.8, "3x3 conv-BN-ReLU", blue),
            "sum": (3.3, 2.0, "sum (fused)", green),
            "pcls": (1.1, 1.2, "dropout, 1x1 -> classes (pam)", grey),
            "scls": (3.3, 1.2, "dropout, 1x1 -> classes (out)", grey),
            "ccls": (5.5, 1.2, "dropout, 1x1 -> classes (cam)", grey),
        },
        [
            ("in", "pin"),
            ("in", "cin"),
            ("pin", "pam"),
            ("cin", "cam"),
            ("pam", "pout"),
            ("cam", "cout"),
            ("pout", "sum"),
            ("cout", "sum"),
            ("sum", "scls"),
            ("pout", "pcls"),
            ("cout", "ccls"),
        ],
        (6.6, 5.6),
        "DANet head (DANetHead: DualAttention + classifiers); logits upsampled to the input",
    )
    diagram(
        "heads-ccnet.svg",
        {
            "in": (2.2, 5.2, "backbone features C (stride 8)", grey),
            "ain": (2.2, 4.4, "3x3 conv-BN-ReLU -> C/4", blue),
            "cca": (2.2, 3.6, "criss-cross attention x recurrence", orange, 2.4),
            "aout": (2.2, 2.8, "3x3 conv-BN-ReLU", blue),
            "cat": (2.2, 2.0, "concat with backbone features", green),
            "fuse": (2.2, 1.2, "3x3 conv-BN-ReLU, dropout, 1x1", grey, 2.4),
        },
        [
            ("in", "ain"),
            ("ain", "cca"),
            ("cca", "aout", "shared weights"),
            ("aout", "cat"),
            ("cat", "fuse"),
        ],
        (4.4, 5.6),
        "CCNet head (CCNetHead, mmseg's CCHead); one logits tensor",
    )
    diagram(
        "heads-scaffold.svg",
        {
            "img": (1.1, 1.0, "image (B, 3, H, W)", "#eeeeee"),
            "bb": (3.8, 1.0, "timm backbone (dilated)", "#dbe7ff"),
            "head": (6.5, 1.0, "attention head", "#ffe3c2"),
            "up": (9.2, 1.0, "bilinear upsample", "#d9f2d9"),
        },
        [("img", "bb"), ("bb", "head", "feature_levels"), ("head", "up")],
        (10.3, 1.6),
        "SegmentationModel: every model of attnblocks.models",
    )
    nonlocal_family_heads()
    self_attention_heads()
    ocrnet_head()


# Box colours of the head diagrams: convolutions, attention, joins, inputs and outputs.
BLUE, ORANGE, GREEN, GREY = "#dbe7ff", "#ffe3c2", "#d9f2d9", "#eeeeee"
FEATURES = "backbone features (B, C, H/8, W/8)"
CLASSIFIER = "classifier: dropout 0.1, 1x1 -> classes"


def nonlocal_family_heads() -> None:
    """NLNet, GCNet and DNLNet's shared head, and PSANet's."""
    diagram(
        "heads-fcn-attention.svg",
        {
            "in": (2.0, 5.55, FEATURES, GREY, 2.6),
            "ain": (2.0, 4.75, "attention_in: 3x3 conv-BN-ReLU, C -> C/4", BLUE, 2.8),
            "block": (
                2.0,
                3.8,
                "the block on C/4 channels, one of:\nNonLocal2d (NLNet), "
                "ContextBlock (GCNet),\nDisentangledNonLocal2d (DNLNet)",
                ORANGE,
                3.0,
                0.6,
            ),
            "aout": (2.0, 2.85, "attention_out: 3x3 conv-BN-ReLU, C/4", BLUE, 2.6),
            "cat": (2.0, 2.05, "concat [input, block path]: C + C/4", GREEN, 2.6),
            "fuse": (2.0, 1.25, "fuse: 3x3 conv-BN-ReLU -> C/4", BLUE, 2.6),
            "cls": (2.0, 0.45, CLASSIFIER, GREY, 2.6),
        },
        [
            ("in", "ain"),
            ("ain", "block"),
            ("block", "aout", "same shape as its input"),
            ("aout", "cat"),
            ("in", "cat", "the input", -0.3),
            ("cat", "fuse"),
            ("fuse", "cls"),
        ],
        (3.8, 5.95),
        "NLNet, GCNet and DNLNet head (FCNAttentionHead)",
    )
    collect, middle, distribute = 2.1, 3.7, 5.3
    diagram(
        "heads-psanet.svg",
        {
            "in": (middle, 8.35, FEATURES, GREY, 2.6),
            "reduce": (
                collect,
                7.45,
                "reduce: 1x1 conv-BN-ReLU -> C/4,\nshrink to 1/2 (bilinear)",
                BLUE,
                2.8,
                0.5,
            ),
            "reduce_p": (
                distribute,
                7.45,
                "reduce_p: 1x1 conv-BN-ReLU -> C/4,\nshrink to 1/2 (bilinear)",
                BLUE,
                2.8,
                0.5,
            ),
            "mask": (
                collect,
                6.55,
                "mask: 1x1 conv-BN-ReLU, 1x1 conv\n-> h_m x w_m logits per pixel",
                BLUE,
                2.8,
                0.5,
            ),
            "mask_p": (
                distribute,
                6.55,
                "mask_p: 1x1 conv-BN-ReLU, 1x1 conv\n-> h_m x w_m logits per pixel",
                BLUE,
                2.8,
                0.5,
            ),
            "psa": (
                collect,
                5.65,
                "psa_mask (collect): place each mask\non the map, softmax over positions",
                ORANGE,
                2.8,
                0.5,
            ),
            "psa_p": (
                distribute,
                5.65,
                "psa_mask (distribute): place each mask\non the map, softmax over positions",
                ORANGE,
                2.8,
                0.5,
            ),
            "agg": (
                collect,
                4.75,
                "collect: out_i = sum_j a_ij x_j\n(a_i predicted by pixel i)",
                ORANGE,
                2.8,
                0.5,
            ),
            "agg_p": (
                distribute,
                4.75,
                "distribute: out_i = sum_j b_ji x_j\n(b_j predicted by pixel j)",
                ORANGE,
                2.8,
                0.5,
            ),
            "cat": (middle, 3.85, "concat the two branches: 2 x C/4", GREEN, 2.6),
            "proj": (
                middle,
                2.95,
                "proj: 1x1 conv-BN-ReLU (padding 1) -> C,\nresize to H/8 x W/8",
                BLUE,
                2.8,
                0.5,
            ),
            "cat2": (middle, 2.05, "concat [input, PSA features]: 2C", GREEN, 2.6),
            "bottleneck": (middle, 1.25, "bottleneck: 3x3 conv-BN-ReLU -> C/4", BLUE, 2.6),
            "cls": (middle, 0.45, CLASSIFIER, GREY, 2.6),
        },
        [
            ("in", "reduce"),
            ("in", "reduce_p"),
            ("reduce", "mask"),
            ("reduce_p", "mask_p"),
            ("mask", "psa"),
            ("mask_p", "psa_p"),
            ("psa", "agg", "weights"),
            ("psa_p", "agg_p", "weights"),
            ("reduce", "agg", "features", -0.2),
            ("reduce_p", "agg_p", "features", 0.2),
            ("agg", "cat"),
            ("agg_p", "cat"),
            ("cat", "proj"),
            ("proj", "cat2"),
            ("in", "cat2", "the input", -0.5),
            ("cat2", "bottleneck"),
            ("bottleneck", "cls"),
        ],
        (7.15, 8.75),
        "PSANet head (PSANetHead), psa_type='bi-direction'",
    )


def self_attention_heads() -> None:
    """ANNNet's, ISANet's and EMANet's heads."""
    diagram(
        "heads-annnet.svg",
        {
            "low": (1.35, 4.65, "layer3: (B, 1024, H/8, W/8)", GREY, 2.4),
            "high": (4.55, 4.65, "layer4: (B, 2048, H/8, W/8)", GREY, 2.4),
            "afnb": (
                2.95,
                3.45,
                "AFNB: layer4 queries attend over layer3 keys and values,\n"
                "these pooled to 1 + 9 + 36 + 64 = 110 tokens (256 wide);\n"
                "[context, layer4] -> 1x1 conv-BN -> 2048",
                ORANGE,
                4.4,
                0.65,
            ),
            "bottleneck": (
                2.95,
                2.35,
                "dropout 0.1, bottleneck: 3x3 conv-BN-ReLU -> 512",
                BLUE,
                3.4,
            ),
            "apnb": (
                2.95,
                1.4,
                "APNB: self-attention over 110 pooled tokens (256 wide);\n"
                "[context, input] -> 1x1 conv-BN-ReLU -> 512",
                ORANGE,
                4.0,
                0.5,
            ),
            "cls": (2.95, 0.45, CLASSIFIER, GREY, 2.6),
        },
        [
            ("low", "afnb", "keys, values"),
            ("high", "afnb", "queries"),
            ("afnb", "bottleneck"),
            ("bottleneck", "apnb"),
            ("apnb", "cls"),
        ],
        (5.9, 5.05),
        "ANNNet head (ANNNetHead): two backbone levels",
    )
    diagram(
        "heads-isanet.svg",
        {
            "in": (2.45, 5.95, FEATURES, GREY, 2.6),
            "ain": (2.45, 5.15, "attention_in: 3x3 conv-BN-ReLU -> 512", BLUE, 2.6),
            "global": (
                2.45,
                4.1,
                "global_relation: the pixels 8 rows and columns apart\n"
                "(one per 8 x 8 group) attend to each other\n"
                "(queries, keys 256 wide; 1x1 conv-BN-ReLU out)",
                ORANGE,
                3.6,
                0.6,
            ),
            "local": (
                2.45,
                3.0,
                "local_relation: the pixels of each 8 x 8 group\n"
                "attend to each other (the same layout)",
                ORANGE,
                3.6,
                0.5,
            ),
            "cat": (2.45, 2.05, "concat [ISA output, attention_in output]: 1024", GREEN, 3.2),
            "fuse": (2.45, 1.25, "fuse: 1x1 conv-BN-ReLU -> 512", BLUE, 2.6),
            "cls": (2.45, 0.45, CLASSIFIER, GREY, 2.6),
        },
        [
            ("in", "ain"),
            ("ain", "global", "zero-pad to multiples of 8"),
            ("global", "local"),
            ("local", "cat", "crop back to H/8 x W/8"),
            ("ain", "cat", "attention_in output", -0.3),
            ("cat", "fuse"),
            ("fuse", "cls"),
        ],
        (4.45, 6.35),
        "ISANet head (ISANetHead): interlaced sparse self-attention",
    )
    diagram(
        "heads-emanet.svg",
        {
            "in": (2.65, 8.25, FEATURES, GREY, 2.6),
            "ain": (2.65, 7.45, "attention_in: 3x3 conv-BN-ReLU -> 512", BLUE, 2.6),
            "in_conv": (2.65, 6.65, "in_conv: 1x1 conv (frozen)", BLUE, 2.6),
            "em": (
                2.65,
                5.6,
                "3 EM stages over K = 64 bases (no gradient)\n"
                "E: z = softmax over k of x . mu_k\nM: mu_k = z-weighted mean of x, "
                "L2-normalised",
                ORANGE,
                3.6,
                0.6,
            ),
            "bases": (
                6.15,
                5.6,
                "bases buffer (1, 512, 64),\nmoved with momentum 0.1\nin training",
                GREY,
                2.2,
                0.6,
            ),
            "recon": (
                2.65,
                4.55,
                "rebuild every pixel as sum_k z_k mu_k,\nReLU, out_conv: 1x1 conv-BN",
                BLUE,
                3.0,
                0.5,
            ),
            "add": (2.65, 3.65, "add the unit's input, ReLU", GREEN, 2.6),
            "aout": (2.65, 2.85, "attention_out: 3x3 conv-BN-ReLU -> 256", BLUE, 2.6),
            "cat": (2.65, 2.05, "concat [input, that]: C + 256", GREEN, 2.6),
            "fuse": (2.65, 1.25, "fuse: 3x3 conv-BN-ReLU -> 256", BLUE, 2.6),
            "cls": (2.65, 0.45, CLASSIFIER, GREY, 2.6),
        },
        [
            ("in", "ain"),
            ("ain", "in_conv"),
            ("in_conv", "em"),
            ("bases", "em", "initial mu"),
            ("em", "recon"),
            ("recon", "add"),
            ("ain", "add", "residual", -0.25),
            ("add", "aout"),
            ("aout", "cat"),
            ("in", "cat", "the input", -0.55),
            ("cat", "fuse"),
            ("fuse", "cls"),
        ],
        (7.4, 8.65),
        "EMANet head (EMANetHead); the EMA unit runs from in_conv to the ReLU",
    )


def ocrnet_head() -> None:
    """OCRNet's cascade: the coarse FCN head, then the OCR head."""
    coarse, middle, ocr = 1.5, 4.6, 7.7
    diagram(
        "heads-ocrnet.svg",
        {
            "hrnet": (
                middle,
                6.5,
                "HRNet: the 4 branches resized to the stride-4 one\n"
                "and concatenated (W18: 270 ch., W48: 720 ch.)",
                GREY,
                3.6,
                0.5,
            ),
            "x_coarse": (
                coarse,
                5.5,
                "coarse input: ResNet layer3\n(1024 ch.) or the HRNet concat",
                GREY,
                2.6,
                0.5,
            ),
            "x": (
                ocr,
                5.5,
                "OCR input: ResNet layer4\n(2048 ch.) or the HRNet concat",
                GREY,
                2.6,
                0.5,
            ),
            "coarse_conv": (
                coarse,
                4.5,
                "coarse_conv: 3x3 conv-BN-ReLU\n-> 256 (HRNet: 1x1, width kept)",
                BLUE,
                2.6,
                0.5,
            ),
            "bottleneck": (
                ocr,
                4.5,
                "bottleneck: 3x3 conv-BN-ReLU\n-> 512: the pixels",
                BLUE,
                2.6,
                0.5,
            ),
            "coarse_cls": (
                coarse,
                3.5,
                "coarse_classifier: dropout,\n1x1 -> K classes",
                GREY,
                2.6,
                0.5,
            ),
            "gather": (
                middle,
                3.5,
                "SpatialGather: softmax over\npositions -> K regions",
                GREEN,
                2.6,
                0.5,
            ),
            "coarse_out": (coarse, 2.5, "coarse logits (training loss)", GREY, 2.6),
            "attention": (
                ocr,
                2.5,
                "ObjectContextBlock: each pixel\nattends over the K regions",
                ORANGE,
                2.6,
                0.5,
            ),
            "fuse": (
                ocr,
                1.5,
                "[context, pixels] ->\n1x1 conv-BN-ReLU -> 512",
                BLUE,
                2.6,
                0.5,
            ),
            "cls": (ocr, 0.5, "classifier: dropout,\n1x1 -> K classes (out)", GREY, 2.6, 0.5),
        },
        [
            ("hrnet", "x_coarse", "HRNet"),
            ("hrnet", "x", "HRNet"),
            ("x_coarse", "coarse_conv"),
            ("x", "bottleneck"),
            ("coarse_conv", "coarse_cls"),
            ("coarse_cls", "gather", "coarse logits"),
            ("bottleneck", "gather", "pixels"),
            ("coarse_cls", "coarse_out"),
            ("bottleneck", "attention", "queries"),
            ("gather", "attention", "keys, values"),
            ("attention", "fuse", "context"),
            ("bottleneck", "fuse", "pixels", 0.25),
            ("fuse", "cls"),
        ],
        (9.45, 6.9),
        "OCRNet head (OCRNetHead: an FCN head, then the OCR head); OCRNetOutput(out, coarse)",
    )


# ---------------------------------------------------------------- 3. the trained demo DANet


def train_demo(iters: int, retrain: bool) -> Path:
    checkpoint = RUN / "checkpoint.pt"
    if checkpoint.exists() and not retrain:
        print(f"using the run in {RUN.relative_to(ROOT)} (--retrain to train again)")
        return checkpoint
    command = [sys.executable, str(ROOT / "examples" / "train.py"), "--iters", str(iters),
               "--val-limit", "100", "--no-pictures", "--out", str(RUN), "--overwrite"]  # fmt: skip
    print("training:", " ".join(command))
    subprocess.run(command, check=True, cwd=ROOT)
    return checkpoint


@torch.no_grad()
def demo_figures(checkpoint: Path) -> None:
    from examples.checkpoints import load_model
    from examples.synthetic import CLASSES
    from examples.train import synthetic_validation_set
    from examples.transforms import denormalize, normalize
    from examples.visualize_attention import palette

    model, state = load_model(checkpoint, torch.device("cpu"))
    model.eval()
    metrics = json.loads((checkpoint.parent / "metrics.json").read_text())
    miou = metrics.get("miou", metrics.get("mIoU"))
    attention = model.head.attention
    pam = attention.pam

    def features_of(image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        captured = {}
        hooks = [
            attention.pam.register_forward_hook(lambda m, a, o: captured.update(pam_in=a[0])),
            attention.cam.register_forward_hook(
                lambda m, a, o: captured.update(cam_in=a[0], cam_out=o)
            ),
        ]
        try:
            model(image[None])
        finally:
            for hook in hooks:
                hook.remove()
        return captured["pam_in"], captured["cam_in"], captured["cam_out"]

    # The same learned query/key projections in a criss-cross and a non-local block.
    channels = pam.channels
    cca = CrissCrossAttention(channels, reduction=channels // pam.key_channels)
    local = NonLocal2d(channels, reduction=channels // pam.key_channels, use_scale=False)
    cca.query_conv.load_state_dict(pam.query_conv.state_dict())
    cca.key_conv.load_state_dict(pam.key_conv.state_dict())
    local.theta.load_state_dict(pam.query_conv.state_dict())
    local.phi.load_state_dict(pam.key_conv.state_dict())

    scenes = synthetic_validation_set(seed=0)
    for name, (image, label) in (("synthetic", scenes[0]),):
        height, width = image.shape[-2:]
        pam_in, cam_in, cam_out = features_of(image)
        fh, fw = pam_in.shape[-2:]
        points = []
        for cls in ("car", "truck", "lamp", "road"):
            inside = (label == CLASSES.index(cls)).nonzero()
            if len(inside):
                points.append(tuple(inside[len(inside) // 2].tolist()))
        points = points[:3]
        cells = [(r * fh // height, c * fw // width) for r, c in points]

        def up(maps: Tensor, size: tuple[int, int] = (height, width)) -> Tensor:
            return F.interpolate(maps[None], size=size, mode="bilinear")[0]

        rows = {
            "PAM (trained)": up(pam.attention_map(pam_in, cells)[0]),
            "criss-cross, same q/k": up(cca.attention_map(pam_in, cells)[0]),
            "non-local, same q/k": up(local.attention_map(pam_in, cells)[0]),
        }
        picture = denormalize(image).permute(1, 2, 0).numpy()
        prediction = model.predict(image[None])[0]
        fig, axes = plt.subplots(3, len(points) + 1, figsize=(2.0 * (len(points) + 1), 6.4))
        colours = palette(len(CLASSES))
        for row, (title, maps) in enumerate(rows.items()):
            first = axes[row, 0]
            if row == 0:
                first.imshow(picture)
                mark(first, points)
                first.set_title("scene, query pixels")
            elif row == 1:
                first.imshow(prediction.numpy(), cmap=colours, vmin=0, vmax=len(CLASSES) - 1,
                             interpolation="nearest")  # fmt: skip
                first.set_title("prediction")
            else:
                first.imshow(label.numpy(), cmap=colours, vmin=0, vmax=len(CLASSES) - 1,
                             interpolation="nearest")  # fmt: skip
                first.set_title("ground truth")
            for index, ax in enumerate(axes[row, 1:]):
                ax.imshow(picture, alpha=0.4)
                ax.imshow(maps[index].numpy(), cmap="jet", alpha=0.6)
                mark(ax, [points[index]], first=index)
                cls = CLASSES[int(label[points[index]])]
                ax.set_title(f"{title}: {cls}", fontsize=7)
        for ax in axes.flat:
            ax.axis("off")
        fig.suptitle(
            f"Demo DANet ({state.get('iteration', '?')} iterations, mIoU {miou:.3f} on 100 "
            f"validation scenes; gamma PAM "
            f"{pam.gamma.item():.2f}, CAM {attention.cam.gamma.item():.2f})",
            fontsize=8,
        )
        save(fig, f"demo-{name}-attention.png")

        change = (cam_out - cam_in).abs().flatten(2).sum(-1)[0]
        top = change.topk(3).indices.tolist()
        weights = attention.cam.attention_weights(cam_in)[0]
        fig, axes = plt.subplots(2, 4, figsize=(8.4, 4.4))
        axes[0, 0].imshow(picture)
        axes[0, 0].set_title("scene")
        axes[1, 0].imshow(weights.numpy(), cmap="viridis")
        axes[1, 0].set_title(f"CAM weights ({weights.shape[0]} x {weights.shape[1]})")
        for ax, channel in zip(axes[0, 1:], top):
            ax.imshow(cam_in[0, channel].numpy(), cmap="viridis")
            ax.set_title(f"channel {channel} before CAM")
        for ax, channel in zip(axes[1, 1:], top):
            ax.imshow(cam_out[0, channel].numpy(), cmap="viridis")
            ax.set_title(f"channel {channel} after CAM")
        for ax in axes.flat:
            ax.axis("off")
        fig.suptitle("CAM in the demo DANet: the three channels it changed most", fontsize=9)
        save(fig, f"demo-{name}-cam.png")

    # The same model on the photograph (a scene it never saw: its classes do not fit).
    rgb, _ = photograph(128)
    pixels = torch.from_numpy((rgb * 255).round().astype(np.uint8)).permute(2, 0, 1)
    image = normalize(pixels)
    pam_in, _, _ = features_of(image)
    fh, fw = pam_in.shape[-2:]
    points = [(28, 60), (80, 16), (112, 80)]
    cells = [(r * fh // 128, c * fw // 128) for r, c in points]
    maps = F.interpolate(pam.attention_map(pam_in, cells), size=(128, 128), mode="bilinear")[0]
    draw_block_maps(
        "demo-photo-attention.png",
        "The demo DANet's PAM on the photograph (trained on synthetic scenes only)",
        rgb, maps, points, [f"point {i + 1}" for i in range(3)],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=600, help="the demo run's iterations")
    parser.add_argument("--retrain", action="store_true", help="train the demo run again")
    parser.add_argument("--skip-demo", action="store_true", help="only the blocks and heads")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    IMAGES.mkdir(parents=True, exist_ok=True)
    block_figures()
    head_figures()
    if not args.skip_demo:
        demo_figures(train_demo(args.iters, args.retrain))


if __name__ == "__main__":
    main()

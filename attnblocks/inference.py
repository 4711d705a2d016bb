"""Segmentation evaluation of DANet's recipe: sliding windows, horizontal flip, multi-scale.

Works for any model that maps an image batch ``(B, 3, H, W)`` to class logits
``(B, K, H, W)`` at the input's resolution, returned as a tensor or as a tuple
(or NamedTuple, such as :class:`~attnblocks.models.DANetOutput`) whose first element
is the logits. Softmax is taken per window, flip and scale, and the probabilities
(not the logits) are averaged.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validation import check_float_tensor

Size2 = Union[int, tuple[int, int]]
Model = Callable[[Tensor], Any]

__all__ = ["predict_labels", "predict_scores"]


def _pair(name: str, value: object) -> tuple[int, int]:
    """``value`` as a ``(h, w)`` pair of positive ints; an int ``n`` means ``(n, n)``."""
    pair = (value, value) if isinstance(value, int) else value
    valid = (
        isinstance(pair, (tuple, list))
        and len(pair) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair)
    )
    if not valid:
        raise ValueError(f"{name} must be a positive int or a pair (h, w) of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_windows(
    crop_size: Size2 | None, stride: Size2 | None
) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """Validate ``crop_size`` and ``stride``; fill in the default stride of 2/3 of the crop."""
    if crop_size is None:
        if stride is not None:
            raise ValueError(
                f"stride is only used with sliding windows; got stride={stride!r} "
                "with crop_size=None (whole image in one pass)"
            )
        return None, None
    crop = _pair("crop_size", crop_size)
    if stride is None:
        # the authors' evaluation slides by 2/3 of the crop; at least 1 for tiny crops
        return crop, (max(1, 2 * crop[0] // 3), max(1, 2 * crop[1] // 3))
    step = _pair("stride", stride)
    if step[0] > crop[0] or step[1] > crop[1]:
        raise ValueError(
            f"stride must not exceed crop_size, else some pixels are never covered; "
            f"got stride {step} with crop_size {crop}"
        )
    return crop, step


def _check_scales(scales: object) -> tuple[float, ...]:
    """``scales`` as a non-empty tuple of positive finite floats."""
    message = f"scales must be a non-empty sequence of positive floats, got {scales!r}"
    if not isinstance(scales, Sequence) or isinstance(scales, str) or len(scales) == 0:
        raise ValueError(message)
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, (int, float)):
            raise ValueError(message)
        if not (math.isfinite(s) and s > 0):
            raise ValueError(message)
    return tuple(float(s) for s in scales)


def _starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets along one axis of ``length >= crop``: every ``stride``, the last at the end.

    Args:
        length: the (padded) extent of the image along the axis.
        crop: the window's extent.
        stride: the step between windows.

    Returns:
        Increasing offsets whose windows ``[start, start + crop)`` cover ``[0, length)``.
    """
    starts = list(range(0, length - crop + 1, stride))
    if starts[-1] + crop < length:
        starts.append(length - crop)  # align the last window to the bottom/right edge
    return starts


def _model_align_corners(model: Model) -> bool:
    """The ``align_corners`` a model upsamples with (DDP's ``module`` looked into); else False.

    Resizing images and scores as the model resizes its logits keeps them aligned: a
    model built with ``align_corners=True`` (the authors' DANet) was evaluated that way.
    """
    inner = getattr(model, "module", model)  # DistributedDataParallel / DataParallel wrap it
    value = getattr(inner, "align_corners", False)
    return value if isinstance(value, bool) else False


def _probabilities(model: Model, x: Tensor) -> Tensor:
    """Softmax over classes of ``model(x)``'s logits in float32, checked to match ``x``'s size."""
    out = model(x)
    logits = out[0] if isinstance(out, (tuple, list)) else out  # (DANet)Output: logits first
    if not isinstance(logits, Tensor):
        raise ValueError(
            f"the model must return a tensor or a tuple whose first element is a tensor, "
            f"got {type(logits).__name__}"
        )
    expected = f"({x.shape[0]}, K, {x.shape[2]}, {x.shape[3]})"
    if logits.ndim != 4 or logits.shape[0] != x.shape[0] or logits.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"the model must return logits of shape (B, K, H, W) = {expected} for an input of "
            f"shape {tuple(x.shape)}, got a {logits.ndim}D tensor of shape {tuple(logits.shape)}"
        )
    return logits.float().softmax(dim=1)


def _predict_flips(model: Model, x: Tensor, flip: bool) -> Tensor:
    """Class probabilities for ``x``, averaged with those of its mirror image when ``flip``."""
    probs = _probabilities(model, x)
    if flip:
        mirrored = _probabilities(model, x.flip(-1)).flip(-1)  # flip back to x's orientation
        probs = (probs + mirrored) / 2
    return probs


def _predict_windows(
    model: Model,
    x: Tensor,
    crop: tuple[int, int] | None,
    step: tuple[int, int] | None,
    flip: bool,
) -> Tensor:
    """Class probabilities for ``x`` at its own size, whole or averaged over sliding windows."""
    if crop is None or step is None:
        return _predict_flips(model, x, flip)
    height, width = x.shape[-2:]
    pad_h, pad_w = max(crop[0] - height, 0), max(crop[1] - width, 0)
    # zeros at the bottom/right so even a small image fills one whole window
    padded = F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x
    full_h, full_w = padded.shape[-2:]
    total: Tensor | None = None
    count = torch.zeros(full_h, full_w, device=x.device)
    for top in _starts(full_h, crop[0], step[0]):
        for left in _starts(full_w, crop[1], step[1]):
            window = padded[..., top : top + crop[0], left : left + crop[1]]
            probs = _predict_flips(model, window, flip)
            if total is None:
                total = probs.new_zeros(*probs.shape[:2], full_h, full_w)
            elif probs.shape[1] != total.shape[1]:
                raise ValueError(
                    f"the model returned {probs.shape[1]} classes for one window and "
                    f"{total.shape[1]} for another"
                )
            total[..., top : top + crop[0], left : left + crop[1]] += probs
            count[top : top + crop[0], left : left + crop[1]] += 1
    assert total is not None  # at least one window along each axis
    return (total / count)[..., :height, :width]  # drop the padding


def predict_scores(
    model: Model,
    images: Tensor,
    *,
    crop_size: Size2 | None = None,
    stride: Size2 | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    align_corners: bool | None = None,
) -> Tensor:
    """Class probabilities of a segmentation model, averaged over windows, flips and scales.

    For each scale the image is resized by that factor (bilinear, size rounded to the
    nearest pixel), predicted whole or in sliding windows, and the probabilities are
    resized back to ``H x W``; the result is the mean over scales. Windows are
    ``crop_size`` large, start every ``stride`` pixels, and the last one along each
    axis is aligned to the bottom/right edge, so every pixel is covered; where windows
    overlap, each pixel's probabilities are averaged over the windows that cover it.
    An image (or rescaled image) smaller than the crop is zero-padded at the
    bottom/right up to the crop and the prediction cropped back. With ``flip`` each
    window is also predicted mirrored left-right, and the mirrored probabilities,
    flipped back, are averaged in. Softmax is taken per window, flip and scale.

    Runs under :func:`torch.inference_mode`; the model's train/eval mode is left as
    the caller set it.

    Args:
        model: maps ``(B, 3, h, w)`` to logits ``(B, K, h, w)``, returned as a tensor
            or as a tuple / NamedTuple whose first element is the logits.
        images: ``(B, 3, H, W)`` floating-point batch, normalised as the model expects.
        crop_size: window size, an int or ``(h, w)``; None predicts the whole
            (rescaled) image in one pass.
        stride: step between windows, an int or ``(h, w)`` no larger than the crop
            (default: 2/3 of the crop, as in the authors' evaluation); only with
            ``crop_size``.
        scales: resize factors of the image, e.g. ``(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)``.
        flip: also predict the horizontally flipped image.
        align_corners: ``align_corners`` of the bilinear resizing of images and
            probabilities; None (default) takes the model's own ``align_corners``
            attribute (a :class:`~attnblocks.models.DANet`'s, also inside DDP), False
            for models without one.

    Returns:
        ``(B, K, H, W)`` float32 class probabilities (summing to 1 over ``K``) on
        ``images``' device.
    """
    check_float_tensor("images", images, ("B", "C", "H", "W"))
    height, width = images.shape[-2:]
    if height == 0 or width == 0:
        raise ValueError(f"images must be non-empty, got shape {tuple(images.shape)}")
    crop, step = _check_windows(crop_size, stride)
    factors = _check_scales(scales)
    if align_corners is None:
        align_corners = _model_align_corners(model)

    total: Tensor | None = None
    with torch.inference_mode():
        for factor in factors:
            size = (max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5)))
            x = images
            if size != (height, width):
                x = F.interpolate(images, size=size, mode="bilinear", align_corners=align_corners)
            probs = _predict_windows(model, x, crop, step, flip)
            if size != (height, width):
                probs = F.interpolate(
                    probs, size=(height, width), mode="bilinear", align_corners=align_corners
                )
            if total is not None and probs.shape[1] != total.shape[1]:
                raise ValueError(
                    f"the model returned {probs.shape[1]} classes at scale {factor} and "
                    f"{total.shape[1]} at another scale"
                )
            total = probs if total is None else total + probs
        assert total is not None  # scales is non-empty
        return total / len(factors)


def predict_labels(
    model: Model,
    images: Tensor,
    *,
    crop_size: Size2 | None = None,
    stride: Size2 | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    align_corners: bool | None = None,
) -> Tensor:
    """Per-pixel class labels: the argmax over classes of :func:`predict_scores`.

    Args:
        model: as in :func:`predict_scores`.
        images: ``(B, 3, H, W)`` floating-point batch.
        crop_size: as in :func:`predict_scores`.
        stride: as in :func:`predict_scores`.
        scales: as in :func:`predict_scores`.
        flip: as in :func:`predict_scores`.
        align_corners: as in :func:`predict_scores`.

    Returns:
        ``(B, H, W)`` int64 labels.
    """
    scores = predict_scores(
        model,
        images,
        crop_size=crop_size,
        stride=stride,
        scales=scales,
        flip=flip,
        align_corners=align_corners,
    )
    with torch.inference_mode():
        return scores.argmax(dim=1)

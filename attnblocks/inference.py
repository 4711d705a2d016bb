"""Test-time decoding of segmentation models: whole image or sliding windows, flips, scales.

Works for any model that maps an image batch ``(B, 3, H, W)`` to class logits
``(B, K, H, W)`` at the input's resolution, returned as a tensor or as a tuple
(or NamedTuple, such as :class:`~attnblocks.models.DANetOutput`) whose first element
is the logits. Two recipes:

- ``"mmseg"`` (the default), mmsegmentation 1.x's ``EncoderDecoder`` and its test-time
  augmentation: a window's logits are added where it lies and divided by the number of
  windows covering each pixel (``slide_inference``); an image smaller than the window
  along an axis is decoded at its own size there, unpadded; each view (scale, flip)
  is resized back to the image's size as logits; several views are merged by
  averaging their softmax (``SegTTAModel``). One view gives its logits.
- ``"danet"``, the evaluation of the DANet authors' code (Fu et al., "Dual Attention
  Network for Scene Segmentation", CVPR 2019, https://arxiv.org/abs/1809.02983):
  softmax per window, flip and scale, probabilities averaged, an image smaller than the
  window zero-padded up to it.

:func:`predict_views` is the mmseg recipe on views that are already prepared (the way
``SegmentationModel.predict_image`` feeds it images resized as mmseg resizes them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validation import check_float_tensor
from .pretrained.resize import rescale_size, scale_size

Size2 = Union[int, tuple[int, int]]
Model = Callable[[Tensor], Any]
Recipe = Literal["mmseg", "danet"]

__all__ = ["Recipe", "predict_labels", "predict_scores", "predict_views", "tta_size"]


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


def _model_align_corners(model: Model) -> bool:
    """The ``align_corners`` a model upsamples with (DDP's ``module`` looked into); else False.

    Resizing images and scores as the model resizes its logits keeps them aligned: a
    model built with ``align_corners=True`` (the authors' DANet) was evaluated that way.
    """
    inner = getattr(model, "module", model)  # DistributedDataParallel / DataParallel wrap it
    value = getattr(inner, "align_corners", False)
    return value if isinstance(value, bool) else False


def tta_size(height: int, width: int, ratio: float) -> tuple[int, int]:
    """The size mmseg's test-time augmentation resizes an image to for one ``ratio``.

    mmcv's ``Resize(scale_factor=ratio, keep_ratio=True)``: the size times ``ratio``
    (rounded), used as the bounds of a keep-ratio rescale (rounded again).

    Args:
        height: the image height.
        width: the image width.
        ratio: the scale factor (``img_ratios`` of mmseg's ``tta_pipeline``).
    """
    return rescale_size(height, width, scale_size(height, width, ratio))


def _logits(model: Model, x: Tensor) -> Tensor:
    """``model(x)``'s logits in float32, checked to match ``x``'s batch and size."""
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
    return logits.float()


def _window_starts(length: int, crop: int, stride: int) -> list[int]:
    """mmseg's window offsets along an axis: ``ceil((length - crop) / stride) + 1`` windows
    every ``stride``, the last moved back to end at the edge; one window ``[0, length)``
    when ``length <= crop`` (then shorter than the crop)."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    return [max(min(index * stride + crop, length) - crop, 0) for index in range(count)]


def _decode(
    model: Model, x: Tensor, crop: tuple[int, int] | None, step: tuple[int, int] | None
) -> Tensor:
    """mmseg's ``whole_inference`` or ``slide_inference``: logits at ``x``'s size."""
    if crop is None or step is None:
        return _logits(model, x)
    height, width = x.shape[-2:]
    total: Tensor | None = None
    count = x.new_zeros((x.shape[0], 1, height, width), dtype=torch.float32)
    for top in _window_starts(height, crop[0], step[0]):
        for left in _window_starts(width, crop[1], step[1]):
            bottom, right = min(top + crop[0], height), min(left + crop[1], width)
            logits = _logits(model, x[..., top:bottom, left:right])  # unpadded, even if small
            if total is None:
                total = logits.new_zeros((*logits.shape[:2], height, width))
            elif logits.shape[1] != total.shape[1]:
                raise ValueError(
                    f"the model returned {logits.shape[1]} classes for one window and "
                    f"{total.shape[1]} for another"
                )
            total[..., top:bottom, left:right] += logits
            count[..., top:bottom, left:right] += 1
    assert total is not None  # at least one window along each axis
    return total / count


def predict_views(
    model: Model,
    views: Iterable[tuple[Tensor, bool]],
    *,
    size: tuple[int, int],
    crop_size: Size2 | None = None,
    stride: Size2 | None = None,
    align_corners: bool = False,
) -> Tensor:
    """mmseg's scores of one image from its prepared views (resized, maybe mirrored).

    Each view is decoded whole or in sliding windows (window logits summed where they
    lie and divided by the count of windows per pixel, windows unpadded), mirrored back
    if it was mirrored, and its logits resized to ``size`` (bilinear, ``align_corners``),
    as mmseg's ``EncoderDecoder.predict`` does. One view: those logits. Several:
    the mean of their softmax, in the order given, as mmseg's ``SegTTAModel``.

    Runs under :func:`torch.inference_mode`; the model's train/eval mode is left as
    the caller set it.

    Args:
        model: maps ``(B, 3, h, w)`` to logits ``(B, K, h, w)`` (a tensor or a tuple
            whose first element is the logits).
        views: ``(images, mirrored)`` pairs: a ``(B, 3, h, w)`` view normalised as the
            model expects, and whether it was flipped left-right.
        size: the ``(H, W)`` to resize every view's logits to (the original image's).
        crop_size: window size, an int or ``(h, w)``; None decodes each view whole.
        stride: step between windows (default: 2/3 of the crop); only with ``crop_size``.
        align_corners: of the bilinear resizing of the logits to ``size``.

    Returns:
        ``(B, K, H, W)`` float32 scores: logits for one view, mean probabilities for
        several.
    """
    crop, step = _check_windows(crop_size, stride)
    first: Tensor | None = None
    total: Tensor | None = None
    count = 0
    with torch.inference_mode():
        for x, mirrored in views:
            check_float_tensor("images", x, ("B", "C", "H", "W"))
            logits = _decode(model, x, crop, step)
            if mirrored:
                logits = logits.flip(-1)  # mmseg flips back before resizing
            if tuple(logits.shape[-2:]) != tuple(size):
                logits = F.interpolate(
                    logits, size=size, mode="bilinear", align_corners=align_corners
                )
            count += 1
            if count == 1:
                first = logits
                continue
            assert first is not None
            if logits.shape[:2] != first.shape[:2]:
                raise ValueError(
                    f"the views gave {tuple(first.shape[:2])} and {tuple(logits.shape[:2])} "
                    "(batch, classes): expected the same for every view"
                )
            if total is None:  # a second view: merge probabilities from now on
                total = first.softmax(dim=1)
            total += logits.softmax(dim=1)
        if first is None:
            raise ValueError("expected at least one view, got none")
        return first if total is None else total / count


def _danet_probabilities(
    model: Model,
    x: Tensor,
    crop: tuple[int, int] | None,
    step: tuple[int, int] | None,
    flip: bool,
) -> Tensor:
    """The DANet recipe at ``x``'s size: softmax per window and flip, averaged, small images
    zero-padded to the crop at the bottom/right."""

    def flips(window: Tensor) -> Tensor:
        probs = _logits(model, window).softmax(dim=1)
        if flip:
            mirrored = _logits(model, window.flip(-1)).softmax(dim=1).flip(-1)
            probs = (probs + mirrored) / 2
        return probs

    if crop is None or step is None:
        return flips(x)
    height, width = x.shape[-2:]
    pad_h, pad_w = max(crop[0] - height, 0), max(crop[1] - width, 0)
    padded = F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x
    full_h, full_w = padded.shape[-2:]
    total: Tensor | None = None
    count = torch.zeros(full_h, full_w, device=x.device)
    for top in _window_starts(full_h, crop[0], step[0]):  # full-size windows: mmseg's offsets
        for left in _window_starts(full_w, crop[1], step[1]):
            probs = flips(padded[..., top : top + crop[0], left : left + crop[1]])
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
    recipe: Recipe = "mmseg",
) -> Tensor:
    """Class scores of a segmentation model over windows, flips and scales.

    Each scale resizes the batch (bilinear on these normalised floats; mmseg's
    test-time augmentation sizes, :func:`tta_size`; ``SegmentationModel.predict_image``
    resizes the uint8 image as mmseg does instead). Windows are ``crop_size`` large,
    start every ``stride`` pixels, the last one along each axis ending at the
    bottom/right edge (mmseg's offsets), so every pixel is covered.

    - ``recipe="mmseg"``: :func:`predict_views` of the views (each scale, mirrored too
      with ``flip``): window logits averaged per pixel, a view smaller than the window
      decoded unpadded, each view's logits resized back to ``H x W``; one view returns
      its logits, several the mean of their softmax.
    - ``recipe="danet"``: the DANet authors' evaluation: softmax per window (and its
      mirror with ``flip``), probabilities averaged over windows, flips and scales; an
      image smaller than the crop is zero-padded at the bottom/right up to it and the
      prediction cropped back; always probabilities.

    Runs under :func:`torch.inference_mode`; the model's train/eval mode is left as
    the caller set it.

    Args:
        model: maps ``(B, 3, h, w)`` to logits ``(B, K, h, w)``, returned as a tensor
            or as a tuple / NamedTuple whose first element is the logits.
        images: ``(B, 3, H, W)`` floating-point batch, normalised as the model expects.
        crop_size: window size, an int or ``(h, w)``; None predicts the whole
            (rescaled) image in one pass.
        stride: step between windows, an int or ``(h, w)`` no larger than the crop
            (default: 2/3 of the crop, as in the DANet authors' evaluation); only with
            ``crop_size``.
        scales: resize factors of the image, e.g. ``(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)``.
        flip: also predict the horizontally flipped image.
        align_corners: ``align_corners`` of the bilinear resizing of images and scores;
            None (default) takes the model's own ``align_corners`` attribute (a
            :class:`~attnblocks.models.DANet`'s, also inside DDP), False for models
            without one.
        recipe: ``"mmseg"`` or ``"danet"`` (see above).

    Returns:
        ``(B, K, H, W)`` float32 scores on ``images``' device: with ``"mmseg"`` the
        logits of a single view (scale 1 or one scale, no flip), else probabilities
        summing to 1 over ``K``.
    """
    check_float_tensor("images", images, ("B", "C", "H", "W"))
    height, width = images.shape[-2:]
    if height == 0 or width == 0:
        raise ValueError(f"images must be non-empty, got shape {tuple(images.shape)}")
    crop, step = _check_windows(crop_size, stride)
    factors = _check_scales(scales)
    if recipe not in ("mmseg", "danet"):
        raise ValueError(f"recipe must be 'mmseg' or 'danet', got {recipe!r}")
    if align_corners is None:
        align_corners = _model_align_corners(model)

    def resized(size: tuple[int, int]) -> Tensor:
        if size == (height, width):
            return images
        return F.interpolate(images, size=size, mode="bilinear", align_corners=align_corners)

    with torch.inference_mode():
        if recipe == "mmseg":
            views = (
                (view.flip(-1) if mirrored else view, mirrored)
                for factor in factors
                for view in (resized(tta_size(height, width, factor)),)
                for mirrored in ((False, True) if flip else (False,))
            )
            return predict_views(
                model, views, size=(height, width), crop_size=crop, stride=step,
                align_corners=align_corners,
            )  # fmt: skip
        total: Tensor | None = None
        for factor in factors:
            size = (max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5)))
            probs = _danet_probabilities(model, resized(size), crop, step, flip)
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
    recipe: Recipe = "mmseg",
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
        recipe: as in :func:`predict_scores`.

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
        recipe=recipe,
    )
    with torch.inference_mode():
        return scores.argmax(dim=1)

"""Dilated backbones from timm for segmentation, with DANet's multi-grid option.

timm builds the network (``features_only=True, output_stride=8|16``); the only
changes made here are the multi-grid dilation of the last stage that the authors'
released DANet uses and, for HRNet (which keeps a stride-4 branch instead of dilating:
no output stride), mmseg's bilinear fusion of its branches (``hrnet.py``). ImageNet
weights come from a local file, checked key by key, or from the Hugging Face hub, where
an unreachable hub or ``HF_HUB_OFFLINE`` fails at once instead of after the hub client's
retries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import timm
from torch import Tensor, nn

from .._validation import check_positive_int
from ..compat._keymap import state_dict_problems
from .hrnet import is_hrnet, use_bilinear_fusion

OutputStride = Literal[8, 16]
OUTPUT_STRIDES: tuple[int, ...] = (8, 16)


def apply_multi_grid(backbone: nn.Module, dilations: Sequence[int], name: str = "backbone") -> None:
    """Set per-block dilations of the last stage of a bottleneck ResNet, in place.

    Block ``i`` of ``layer4`` gets dilation ``dilations[i % len(dilations)]`` in its
    3x3 convolution (cycled, as the authors' code does); padding follows, so the
    spatial size is unchanged. DANet-101 as released uses ``(4, 8, 16)`` at output
    stride 8.

    Args:
        backbone: a timm ResNet-family model (or its ``features_only`` wrapper).
        dilations: positive dilations, one per block (cycled when shorter).
        name: the backbone's name, for error messages.

    Raises:
        ValueError: if the backbone has no bottleneck ``layer4`` or a dilation is not positive.
    """
    if not dilations:
        raise ValueError("multi_grid must hold at least one dilation, got an empty sequence")
    for dilation in dilations:
        check_positive_int("multi_grid dilation", dilation)
    stage = getattr(backbone, "layer4", None)
    blocks = list(stage) if isinstance(stage, nn.Sequential) else []

    def is_bottleneck(block: nn.Module) -> bool:
        convs = [getattr(block, f"conv{i}", None) for i in (1, 2, 3)]
        if not all(isinstance(conv, nn.Conv2d) for conv in convs):
            return False
        return [conv.kernel_size for conv in convs] == [(1, 1), (3, 3), (1, 1)]

    if not blocks or not all(is_bottleneck(block) for block in blocks):
        raise ValueError(
            f"multi_grid applies to bottleneck ResNets (a layer4 of 1x1-3x3-1x1 blocks, such as "
            f"resnet50/101, resnet50s/101s, resnet50d); {name!r} has no such layer4"
        )
    for index, block in enumerate(blocks):
        dilation = dilations[index % len(dilations)]
        block.conv2.dilation = (dilation, dilation)
        block.conv2.padding = (dilation, dilation)  # 'same' padding for a 3x3 kernel


def create_backbone(
    name: str,
    output_stride: OutputStride | None = 8,
    multi_grid: Sequence[int] | None = None,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """A timm model returning its last feature map, dilated to ``output_stride``.

    Args:
        name: any timm model name that supports ``features_only`` and ``output_stride``
            (ResNet incl. ``resnet50s``/``resnet101s``, ResNeSt, RegNet, MobileNetV3,
            EfficientNet...), or an HRNet (``hrnet_w18_small_v2``, ``hrnet_w18``...).
        output_stride: 8 or 16; the last stages are dilated instead of strided. None:
            timm's own strides; HRNets (``hrnet_w18``...) take only None: their four
            branches (strides 4 to 32, ``feature_location=""``) are built with mmseg's
            bilinear fusion (:func:`~attnblocks.models.hrnet.use_bilinear_fusion`).
        multi_grid: per-block dilations of the last stage (see :func:`apply_multi_grid`).
        pretrained: load timm's ImageNet weights (downloads them through timm).
        weights: path of a local file with the classifier's state dict (timm's key
            names, ``.pth``/``.bin``/``.safetensors``), loaded instead of a download.
            Every key must fit the model: a ValueError lists missing and unexpected
            keys and shape mismatches (the classifier's keys, which the backbone drops,
            and BatchNorm's ``num_batches_tracked`` counters may be absent).
        **timm_kwargs: passed to ``timm.create_model`` (``in_chans``, ``norm_layer``...);
            ``out_indices=(k,)`` takes stage ``k``'s features instead of the last stage's.

    Returns:
        The timm ``features_only`` model; ``feature_info.channels()[-1]`` is its
        output channel count, and ``model(x)[-1]`` the ``(B, C, H/os, W/os)`` features.

    Raises:
        ValueError: ``weights`` do not fit the model (keys or shapes), or an output
            stride for an HRNet.
        RuntimeError: ``pretrained`` weights cannot be fetched: the hub is out of reach
            (after one attempt) or ``HF_HUB_OFFLINE`` is set and they are not cached.
    """
    if output_stride is not None and output_stride not in OUTPUT_STRIDES:
        raise ValueError(
            f"output_stride must be 8 or 16, got {output_stride!r} (None: timm's own strides)"
        )
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models()")
    hrnet = is_hrnet(name)
    if hrnet and output_stride is not None:
        raise ValueError(
            f"{name!r} is an HRNet, which keeps a stride-4 branch and cannot be dilated: pass "
            f"output_stride=None, got {output_stride!r}"
        )
    # The last stage by default; timm_kwargs may pick an earlier one, e.g. out_indices=(2,).
    options: dict[str, Any] = dict(features_only=True, out_indices=(-1,))
    if output_stride is not None:
        options.update(output_stride=output_stride)
    if hrnet:
        options.update(feature_location="")  # the raw branches, not the classifier's incre maps
    options.update(timm_kwargs)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file not found: {path}")
        _check_weights_fit(name, path, timm_kwargs)
        # timm loads a local file through its pretrained machinery (classifier keys dropped).
        options.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    elif pretrained:
        options.update(pretrained=True)
        hub_file = _hub_weights_file(name)
        if hub_file is not None:
            options.update(pretrained_cfg_overlay=dict(file=str(hub_file)))
    try:
        backbone = timm.create_model(name, **options)
    except (OSError, RuntimeError) as error:
        if weights is not None or not pretrained:
            raise
        raise RuntimeError(
            f"timm could not fetch ImageNet weights for {name!r} (no network or no hub "
            f"access?): {error}. Download them elsewhere and pass backbone_weights=PATH."
        ) from error
    if multi_grid is not None:
        apply_multi_grid(backbone, multi_grid, name)
    if hrnet:
        use_bilinear_fusion(backbone)
    return backbone


# timm_kwargs that shape the features wrapper or the stem's input, not the weights' keys
_FEATURE_KWARGS = ("out_indices", "feature_cls", "feature_cfg", "flatten_sequential", "in_chans",
                   "feature_location")  # fmt: skip


def _check_weights_fit(name: str, path: Path, timm_kwargs: Mapping[str, Any]) -> None:
    """Raise a ValueError unless the state dict in ``path`` fills timm's ``name`` exactly.

    timm loads weights into a ``features_only`` model non-strictly (the classifier is
    dropped), so a file of another architecture would load nothing and say so only in a
    log line. The file is therefore compared with the whole classifier model: every key
    but the classifier's must be there with its shape, and no other key.

    Args:
        name: the timm model name.
        path: the weights file.
        timm_kwargs: the ``timm.create_model`` arguments of the backbone.
    """
    # timm's own reader: safetensors or torch.load(weights_only=True), "state_dict"/"model"
    # entries unwrapped and "module." prefixes stripped, as its pretrained loading does.
    given: Mapping[str, Tensor] = timm.models.load_state_dict(str(path))
    arch_kwargs = {k: v for k, v in timm_kwargs.items() if k not in _FEATURE_KWARGS}
    reference = timm.create_model(name, pretrained=False, **arch_kwargs)
    classifiers = reference.pretrained_cfg.get("classifier") or ()
    skipped = {
        f"{classifier}.{part}"
        for classifier in ((classifiers,) if isinstance(classifiers, str) else classifiers)
        for part in ("weight", "bias")
    }
    expected = {k: v for k, v in reference.state_dict().items() if k not in skipped}
    # BatchNorm counters may be absent (older files lack them); classifier keys may be present.
    given = {k: v for k, v in given.items() if k not in skipped}
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):
            given.setdefault(key, value)
    problems = state_dict_problems(expected, given, source="file")
    if problems:
        raise ValueError(
            f"the backbone weights {path} do not fit timm's {name!r} (is it this model's "
            "ImageNet state dict, with timm's key names?); " + "; ".join(problems)
        )


def _hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set, as huggingface_hub read it."""
    from huggingface_hub import constants

    is_offline = getattr(constants, "is_offline_mode", None)  # a function since hub 1.0
    return bool(is_offline() if is_offline is not None else constants.HF_HUB_OFFLINE)


def _hub_weights_file(name: str) -> Path | None:
    """The local file of timm's hub weights for ``name``, fetched with one try only.

    huggingface_hub retries a failed connection with back-off (46 s before it gives
    up, and timm asks for two file names), so the hub is probed here with a single
    request first. Offline (``HF_HUB_OFFLINE``) or unreachable, the weights come from
    the local cache, or a RuntimeError says at once what to do.

    Args:
        name: the timm model name (a ``.tag`` suffix picks the weights).

    Returns:
        The weights file, or None when timm does not fetch ``name``'s weights from the
        hub (its own download then runs, and reports its own errors).
    """
    cfg = timm.models.get_pretrained_cfg(name)
    if (
        cfg is None
        or not cfg.hf_hub_id
        or cfg.custom_load
        or cfg.source not in (None, "", "hf-hub")
    ):
        return None
    from huggingface_hub import (
        constants,
        get_hf_file_metadata,
        hf_hub_download,
        hf_hub_url,
        try_to_load_from_cache,
    )
    from huggingface_hub.errors import EntryNotFoundError

    repo_id, _, revision_text = cfg.hf_hub_id.partition("@")
    revision = revision_text or None
    # the file names timm tries, safetensors first
    default_names = ("model.safetensors", "pytorch_model.bin")
    filenames = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else default_names
    cached = [
        try_to_load_from_cache(repo_id, filename, revision=revision) for filename in filenames
    ]
    cached_file = next((Path(found) for found in cached if isinstance(found, str)), None)
    advice = "Download them elsewhere and pass backbone_weights=PATH."
    if _hub_offline():
        if cached_file is None:
            raise RuntimeError(
                f"HF_HUB_OFFLINE is set and timm's ImageNet weights for {name!r} ({repo_id}) are "
                f"not in the Hugging Face cache {constants.HF_HUB_CACHE}. {advice}"
            )
        return cached_file
    for filename in filenames:
        url = hf_hub_url(repo_id, filename, revision=revision)
        try:
            get_hf_file_metadata(url)  # one request, no retries
        except EntryNotFoundError:
            continue  # the repository has the weights under the other name
        except Exception as error:  # DNS, refused, timeout, proxy, HTTP errors: the hub's own types
            if cached_file is not None:
                return cached_file  # as the hub client does after its retries
            raise RuntimeError(
                f"timm could not fetch ImageNet weights for {name!r} from {url} (no network or "
                f"no hub access?): {error}. {advice}"
            ) from error
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    return None

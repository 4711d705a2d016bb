"""mmseg's config text, as saved in its checkpoints, read as data: nothing is executed.

mmseg 0.x wrote the whole training config into every checkpoint (``meta["config"]``,
mmcv's ``Config.pretty_text``); mmengine-based 1.x writes it as ``meta["cfg"]``. Both are
Python source made of assignments of literals and ``dict(...)`` calls::

    model = dict(type='EncoderDecoder', decode_head=dict(type='DAHead', align_corners=False))
    test_pipeline = [dict(type='LoadImageFromFile'), ...]

:func:`parse_mmseg_config` walks that source's syntax tree and keeps what is a literal
(numbers, strings, ``True``/``False``/``None``, lists, tuples, dicts, ``dict(k=v)``
calls and names assigned earlier in the text); any other expression becomes
:data:`UNREADABLE` instead of being evaluated, so a downloaded file cannot run code.
:func:`mmseg_test_setup` then reads what a checkpoint's meta says about testing: the
test resize, whole or sliding-window decoding, the decode head's ``align_corners``,
the normalisation, the dataset and its class names and palette.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class _Unreadable:
    """The value of an expression that is not a literal (a call, an attribute...)."""

    def __repr__(self) -> str:
        return "UNREADABLE"


#: Stands for a config value that is not a literal and was therefore not evaluated.
UNREADABLE: Any = _Unreadable()


def _literal(node: ast.AST, names: Mapping[str, Any]) -> Any:
    """The value of a literal expression node, or :data:`UNREADABLE`."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_literal(item, names) for item in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):  # {**other}: not a literal
            return UNREADABLE
        return {_literal(k, names): _literal(v, names) for k, v in zip(node.keys, node.values)}
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "dict"
        and not node.args
        and all(keyword.arg is not None for keyword in node.keywords)
    ):
        return {keyword.arg: _literal(keyword.value, names) for keyword in node.keywords}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, names)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
        return UNREADABLE
    if isinstance(node, ast.Name):
        return names.get(node.id, UNREADABLE)
    return UNREADABLE


def parse_mmseg_config(text: str) -> dict[str, Any]:
    """The top-level assignments of an mmseg config text, literals only.

    Args:
        text: the config source (``meta["config"]`` or ``meta["cfg"]`` of a checkpoint).

    Returns:
        ``{name: value}`` for every ``name = expression`` at the top level; values that
        are not literals are :data:`UNREADABLE`.

    Raises:
        ValueError: if the text is not Python source.
    """
    try:
        tree = ast.parse(text)
    except SyntaxError as error:
        raise ValueError(f"the checkpoint's config text is not readable: {error}") from error
    names: dict[str, Any] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            value = _literal(statement.value, names)
            for target in statement.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = value
    return names


def mmseg_config_of(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The parsed config a checkpoint's ``meta`` carries, or None when it has none.

    Args:
        meta: the checkpoint's ``meta`` (mmseg 0.x: ``config``; mmengine: ``cfg``).
    """
    text = meta.get("config", meta.get("cfg"))
    return parse_mmseg_config(text) if isinstance(text, str) and text.strip() else None


def mmseg_decode_head_types(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The ``type`` of each decode head of a parsed config's model (a cascade has several).

    Args:
        config: a :func:`parse_mmseg_config` result.
    """
    model = config.get("model")
    heads = model.get("decode_head") if isinstance(model, Mapping) else None
    heads = [heads] if isinstance(heads, Mapping) else heads if isinstance(heads, list) else []
    return tuple(str(h["type"]) for h in heads if isinstance(h, Mapping) and "type" in h)


def mmseg_decode_head_settings(
    meta: Mapping[str, Any], head_type: str | None = None
) -> dict[str, Any]:
    """The literal settings of a decode head in a checkpoint's meta config.

    Settings that the weights do not show (ISA's ``down_factor``, the non-local mode, PSA's
    direction...) come from here when the checkpoint carries its config.

    Args:
        meta: the checkpoint's ``meta`` (``{}`` without one).
        head_type: mmseg's head type (``"ISAHead"``); None: the last decode head (a
            cascade's final one).

    Returns:
        ``{name: value}`` of the head's ``dict(...)``, values that are not literals left
        out; ``{}`` when there is no config, an unreadable one (the weights and the
        defaults decide then) or no such head.
    """
    try:
        config = mmseg_config_of(meta)
    except ValueError:  # not Python source: nothing to read settings from
        return {}
    model = config.get("model") if config is not None else None
    heads = model.get("decode_head") if isinstance(model, Mapping) else None
    heads = [heads] if isinstance(heads, Mapping) else heads if isinstance(heads, list) else []
    heads = [head for head in heads if isinstance(head, Mapping)]
    if head_type is not None:
        heads = [head for head in heads if head.get("type") == head_type]
    if not heads:
        return {}
    return {key: value for key, value in heads[-1].items() if _is_literal(value)}


def _is_literal(value: Any) -> bool:
    """Whether a parsed config value holds no :data:`UNREADABLE` at any depth."""
    if isinstance(value, (list, tuple)):
        return all(_is_literal(item) for item in value)
    if isinstance(value, Mapping):
        return all(_is_literal(item) for item in value.values())
    return value is None or isinstance(value, (bool, int, float, str))


# mmseg's dataset classes of the datasets this package knows (0.x and 1.x use the same names)
MMSEG_DATASET_TYPES: dict[str, str] = {
    "CityscapesDataset": "cityscapes",
    "ADE20KDataset": "ade20k",
    "PascalVOCDataset": "voc",
}


@dataclass(frozen=True)
class MMSegTestSetup:
    """What an mmseg checkpoint's meta says about testing; None where it says nothing.

    Read by :func:`mmseg_test_setup` from the config text (mmseg 0.x ``meta["config"]``,
    1.x ``meta["cfg"]``) and the dataset meta (0.x ``CLASSES``/``PALETTE``, 1.x
    ``dataset_meta``).
    """

    dataset: str | None = None  #: "cityscapes", "ade20k" or "voc", from the test dataset's type
    image_scale: tuple[int, int] | None = None  #: (long, short) bounds of the keep-ratio resize
    mode: str | None = None  #: "whole" or "slide" (``test_cfg.mode``)
    crop_size: tuple[int, int] | None = None  #: sliding window (h, w), with mode "slide"
    stride: tuple[int, int] | None = None  #: its step (h, w)
    align_corners: bool | None = None  #: of the (last) decode head's logit resizing
    mean: tuple[float, ...] | None = None  #: normalisation on the 0-255 scale
    std: tuple[float, ...] | None = None
    bgr_to_rgb: bool | None = None  #: whether the model takes RGB (mmseg's images are BGR)
    class_names: tuple[str, ...] | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _pair(value: Any) -> tuple[int, int] | None:
    """A positive int or a pair of them as ``(a, b)``; anything else (UNREADABLE...) as None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (value, value) if value > 0 else None
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return int(value[0]), int(value[1])
    return None


def _floats(value: Any) -> tuple[float, ...] | None:
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return tuple(float(v) for v in value)
    return None


def _flat_steps(pipeline: Any) -> list[Mapping[str, Any]]:
    """A pipeline's transforms in order, the ones inside 0.x's ``MultiScaleFlipAug`` included."""
    steps: list[Mapping[str, Any]] = []
    for step in pipeline if isinstance(pipeline, list) else []:
        if not isinstance(step, Mapping):
            continue
        steps.append(step)
        if step.get("type") == "MultiScaleFlipAug":
            steps += _flat_steps(step.get("transforms"))
    return steps


def _test_pipeline(config: Mapping[str, Any]) -> Any:
    """The test pipeline ``inference_model`` runs: ``test_pipeline``, else the test set's."""
    if isinstance(config.get("test_pipeline"), list):
        return config["test_pipeline"]
    dataset = _mapping(_mapping(config.get("test_dataloader")).get("dataset"))
    if isinstance(dataset.get("pipeline"), list):
        return dataset["pipeline"]
    return _mapping(_mapping(config.get("data")).get("test")).get("pipeline")


def _test_dataset_type(config: Mapping[str, Any]) -> Any:
    for dataset in (
        _mapping(_mapping(config.get("test_dataloader")).get("dataset")),
        _mapping(_mapping(config.get("data")).get("test")),
    ):
        if isinstance(dataset.get("type"), str):
            return dataset["type"]
    return config.get("dataset_type")


def _image_scale(steps: Sequence[Mapping[str, Any]]) -> tuple[int, int] | None:
    """The keep-ratio resize bounds of a test pipeline: 1.x ``Resize(scale)``, 0.x ``img_scale``."""
    scale = None
    for step in steps:
        kind = step.get("type")
        if kind == "MultiScaleFlipAug":  # 0.x: the scale is the wrapper's, a pair or [pair]
            value = step.get("img_scale")
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            scale = _pair(value) if value is not None else scale
        elif kind == "Resize":
            if step.get("keep_ratio") is False:
                warnings.warn(
                    "the checkpoint's test pipeline resizes without keeping the aspect ratio; "
                    "predict_image keeps it (give image_scale yourself if needed)",
                    stacklevel=3,
                )
            if step.get("scale") is not None:  # 1.x
                scale = _pair(step["scale"])
    if scale is None:
        return None
    return max(scale), min(scale)


def _normalisation(config: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]) -> dict:
    """Mean, std, channel order: 1.x ``data_preprocessor``, 0.x ``img_norm_cfg``, ``Normalize``."""
    sources = [
        (_mapping(_mapping(config.get("model")).get("data_preprocessor")), "bgr_to_rgb"),
        (_mapping(config.get("data_preprocessor")), "bgr_to_rgb"),
        *((step, "to_rgb") for step in steps if step.get("type") == "Normalize"),
        (_mapping(config.get("img_norm_cfg")), "to_rgb"),
    ]
    for source, order_key in sources:
        mean, std = _floats(source.get("mean")), _floats(source.get("std"))
        if mean is not None and std is not None:
            order = source.get(order_key)
            return {"mean": mean, "std": std,
                    "bgr_to_rgb": order if isinstance(order, bool) else False}  # fmt: skip
    return {}


def _align_corners(config: Mapping[str, Any]) -> bool | None:
    """The last decode head's ``align_corners`` (mmseg's default False), None without a head."""
    heads = _mapping(config.get("model")).get("decode_head")
    head = heads[-1] if isinstance(heads, list) and heads else heads
    if not isinstance(head, Mapping):
        return None
    value = head.get("align_corners", False)
    return value if isinstance(value, bool) else None


def _test_cfg(config: Mapping[str, Any]) -> dict:
    """Decoding: ``model.test_cfg`` (0.x from v0.9, 1.x), else the top-level ``test_cfg``."""
    test_cfg = _mapping(_mapping(config.get("model")).get("test_cfg")) or _mapping(
        config.get("test_cfg")
    )
    if not test_cfg:
        return {}
    mode = test_cfg.get("mode", "whole")
    if mode == "slide":
        crop, stride = _pair(test_cfg.get("crop_size")), _pair(test_cfg.get("stride"))
        if crop is not None and stride is not None:
            return {"mode": "slide", "crop_size": crop, "stride": stride}
        return {}
    return {"mode": "whole"} if mode == "whole" else {}


def _dataset_meta(meta: Mapping[str, Any]) -> dict:
    """Class names and palette: 0.x ``CLASSES``/``PALETTE``, 1.x ``dataset_meta``."""
    dataset_meta = _mapping(meta.get("dataset_meta"))
    names = meta.get("CLASSES") or dataset_meta.get("classes")
    palette = meta.get("PALETTE") or dataset_meta.get("palette")
    found: dict[str, Any] = {}
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        found["class_names"] = tuple(names)
    if isinstance(palette, (list, tuple)) and all(
        isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) for v in c)
        for c in palette
    ):
        found["palette"] = tuple(tuple(int(v) for v in colour) for colour in palette)
    return found


def mmseg_test_setup(meta: Mapping[str, Any]) -> MMSegTestSetup:
    """What a checkpoint's meta says about testing, read as data.

    From the config text (mmseg 0.x ``meta["config"]``, 1.x ``meta["cfg"]``, parsed by
    :func:`parse_mmseg_config`): the test pipeline's keep-ratio resize (1.x
    ``Resize(scale=...)``, 0.x ``MultiScaleFlipAug(img_scale=...)``), ``test_cfg``
    (``mode``, ``crop_size``, ``stride``), the last decode head's ``align_corners``,
    mean, std and channel order (1.x ``data_preprocessor``, 0.x ``img_norm_cfg`` or the
    pipeline's ``Normalize``) and the test dataset's type; from the dataset meta (0.x
    ``CLASSES``/``PALETTE``, 1.x ``dataset_meta``): class names and palette.

    Args:
        meta: the checkpoint's ``meta`` (may be empty).

    Returns:
        The settings found; fields the meta does not state are None.
    """
    found: dict[str, Any] = _dataset_meta(meta)
    try:
        config = mmseg_config_of(meta)
    except ValueError as error:  # the weights still load; the setup comes from elsewhere
        warnings.warn(f"{error}; its test setup is not read from it", stacklevel=2)
        config = None
    if config is not None:
        steps = _flat_steps(_test_pipeline(config))
        preprocessor = _mapping(_mapping(config.get("model")).get("data_preprocessor"))
        if preprocessor.get("test_cfg"):
            warnings.warn(
                "the checkpoint's data preprocessor pads test images (test_cfg "
                f"{preprocessor['test_cfg']!r}); predict_image does not pad",
                stacklevel=2,
            )
        found.update(_test_cfg(config), **_normalisation(config, steps))
        found["image_scale"] = _image_scale(steps)
        found["align_corners"] = _align_corners(config)
        dataset_type = _test_dataset_type(config)
        found["dataset"] = (
            MMSEG_DATASET_TYPES.get(dataset_type) if isinstance(dataset_type, str) else None
        )
    return MMSegTestSetup(**found)

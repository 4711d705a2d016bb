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
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
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

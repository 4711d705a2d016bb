"""The one mechanism for foreign checkpoints: renaming rules as data, one strict loader.

A source of weights is a :class:`KeyMap`: an ordered table of :class:`Rename` rules from
the source's key prefixes to this package's, the prefixes whose tensors this package
has no use for (an auxiliary training head), and the wrapper prefixes to strip first
(``module.`` of ``DataParallel``). :meth:`KeyMap.convert` renames a state dict and
names every key no rule covers; :func:`load_state_dict_strictly` loads the result and
names every key that is missing, unexpected or misshapen. timm's model files do the
same with a ``checkpoint_filter_fn`` per model; here the tables are data and the
loop and the error messages live once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor, nn


class Rename(NamedTuple):
    """One renaming rule: a key starting with ``source`` starts with ``target`` instead.

    A ``source`` ending in ``.`` renames a whole module's keys; a ``source`` that is a
    complete key renames that key alone.

    Attributes:
        source: key prefix in the foreign checkpoint (``"decode_head.pam.query_project."``).
        target: what replaces it in this package's keys (``"head.attention.pam.query_conv."``).
        convert: changes the tensor as well, when the layouts differ (e.g.
            :func:`scalar_to_vector`); None passes the tensor through unchanged.
    """

    source: str
    target: str
    convert: Callable[[Tensor], Tensor] | None = None


def scalar_to_vector(value: Tensor) -> Tensor:
    """A 0-d tensor (mmcv's ``Scale.scale``) as shape ``[1]`` (this package's ``gamma``)."""
    return value.reshape(1)


def prefixed(rules: tuple[Rename, ...], source: str, target: str) -> tuple[Rename, ...]:
    """``rules`` moved under the prefixes ``source`` and ``target``.

    Puts a part's table inside a whole model's: the authors' head rules
    (``conv5a.0.`` -> ``attention.pam_in.conv.``) under ``head.`` on both sides.

    Args:
        rules: the part's rules, keys relative to the part.
        source: prefix of the part in the foreign checkpoint.
        target: prefix of the part in this package's model.
    """
    return tuple(Rename(source + r.source, target + r.target, r.convert) for r in rules)


@dataclass(frozen=True)
class KeyMap:
    """How the keys of one source of weights become this package's keys.

    Args:
        source: what the weights come from, for error messages ("the authors' DANet").
        renames: the rules, tried in order; the first whose ``source`` starts a key wins.
        drop: prefixes of keys this package has no use for (an auxiliary head); dropped.
        strip: wrapper prefixes removed from every key before anything else.
        hint: what to check when the converted weights do not fit a model, for messages.
    """

    source: str
    renames: tuple[Rename, ...]
    drop: tuple[str, ...] = ()
    strip: tuple[str, ...] = ("module.",)
    hint: str = "check the model's configuration"

    def convert(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Rename the keys of ``state_dict`` (a new dict; tensors unchanged unless a rule converts).

        Args:
            state_dict: the foreign state dict (already unwrapped from its checkpoint).

        Raises:
            ValueError: listing every key that no rule covers and no ``drop`` prefix drops.
        """
        converted: dict[str, Tensor] = {}
        unknown: list[str] = []
        for key, value in state_dict.items():
            for prefix in self.strip:
                key = key.removeprefix(prefix)
            if key.startswith(self.drop):
                continue
            rule = next((r for r in self.renames if key.startswith(r.source)), None)
            if rule is None:
                unknown.append(key)
                continue
            new_key = rule.target + key[len(rule.source) :]
            converted[new_key] = value if rule.convert is None else rule.convert(value)
        if unknown:
            known = ", ".join(r.source.rstrip(".") for r in self.renames)
            raise ValueError(
                f"keys that are not part of {self.source}: {sorted(unknown)}; "
                f"expected keys under {known}"
            )
        return converted

    def load_into(self, model: nn.Module, checkpoint: Mapping[str, Any]) -> None:
        """Convert ``checkpoint`` and load it into ``model`` with :func:`load_state_dict_strictly`.

        Args:
            model: the module to fill, built with the checkpoint's configuration.
            checkpoint: a state dict, or a mapping holding one under ``"state_dict"``.

        Raises:
            ValueError: for keys no rule covers, and for missing, unexpected or
                misshapen keys.
        """
        load_state_dict_strictly(model, self.convert(unwrap_state_dict(checkpoint)), self.hint)


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict inside a checkpoint: ``checkpoint["state_dict"]`` or the mapping itself."""
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        return checkpoint["state_dict"]
    return checkpoint


def state_dict_problems(
    expected: Mapping[str, Tensor], given: Mapping[str, Tensor], source: str = "checkpoint"
) -> list[str]:
    """What keeps ``given`` from filling ``expected`` exactly: missing keys, unexpected keys
    and shape mismatches, one entry each kind that occurs (empty when it fits).

    Args:
        expected: the state dict to fill (its keys and shapes).
        given: the weights offered.
        source: what ``given`` is called in the shape message (``"checkpoint"``, ``"file"``).
    """
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = [
        f"{key}: {source} {tuple(given[key].shape)}, model {tuple(expected[key].shape)}"
        for key in expected
        if key in given and tuple(given[key].shape) != tuple(expected[key].shape)
    ]
    return [
        problem
        for problem in (
            f"missing keys ({len(missing)}): {missing}" if missing else "",
            f"unexpected keys ({len(unexpected)}): {unexpected}" if unexpected else "",
            f"shape mismatches: {mismatched}" if mismatched else "",
        )
        if problem
    ]


def load_state_dict_strictly(
    model: nn.Module, state_dict: Mapping[str, Tensor], hint: str = "check its configuration"
) -> None:
    """Load ``state_dict`` into ``model``; every key filled, every key used, every shape equal.

    Stricter than ``load_state_dict(strict=False)``, which silently leaves layers
    random, and clearer than ``strict=True``: all problems are listed in one error.
    Only BatchNorm's ``num_batches_tracked`` counters may be absent (older checkpoints
    lack them; they do not affect the output): they keep the model's values.

    Args:
        model: the module to fill.
        state_dict: weights with ``model``'s key names.
        hint: what to check when the weights do not fit, for the message.

    Raises:
        ValueError: listing missing keys, unexpected keys and shape mismatches.
    """
    state_dict = dict(state_dict)
    expected = model.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):
            state_dict.setdefault(key, value)
    problems = state_dict_problems(expected, state_dict)
    if problems:
        raise ValueError(
            f"the checkpoint does not match this {type(model).__name__} ({hint}); "
            + "; ".join(problems)
        )
    model.load_state_dict(state_dict, strict=True)

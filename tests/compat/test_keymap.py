"""The one key-mapping mechanism: rules in order, drop, strip, tensor conversion, strict loading."""

import pytest
import torch
from torch import nn

from attnblocks.compat import (
    KeyMap,
    Rename,
    load_state_dict_strictly,
    prefixed,
    scalar_to_vector,
)

TABLE = KeyMap(
    source="a test source",
    renames=(
        Rename("net.first.", "a."),
        Rename("net.", "b."),  # after the more specific rule: net.first.* goes to a.*
        Rename("net_scale", "gamma", scalar_to_vector),
    ),
    drop=("aux.",),
)


def test_first_matching_rule_wins_and_tensors_pass_through():
    weight, bias = torch.ones(2), torch.zeros(2)
    converted = TABLE.convert({"net.first.weight": weight, "net.bias": bias})
    assert converted.keys() == {"a.weight", "b.bias"}
    assert converted["a.weight"] is weight and converted["b.bias"] is bias


def test_strip_drop_and_convert():
    converted = TABLE.convert(
        {
            "module.net.x": torch.ones(1),
            "aux.conv.weight": torch.ones(3),
            "net_scale": torch.tensor(0.5),
        }
    )
    assert converted.keys() == {"b.x", "gamma"}
    assert converted["gamma"].shape == (1,) and converted["gamma"].item() == 0.5


def test_keys_no_rule_covers_are_all_named():
    message = (
        r"not part of a test source: \['other.a', 'other.b'\]; expected keys under net.first, "
    )
    with pytest.raises(ValueError, match=message + "net, net_scale"):
        TABLE.convert({"other.b": torch.ones(1), "net.x": torch.ones(1), "other.a": torch.ones(1)})


def test_prefixed_moves_a_part_table_under_a_prefix():
    rules = prefixed((Rename("x.", "y.", scalar_to_vector),), "decode_head.", "head.")
    assert rules == (Rename("decode_head.x.", "head.y.", scalar_to_vector),)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1)
        self.norm = nn.BatchNorm2d(3)


def tiny_state():
    return {key: torch.full_like(value, 0.25) for key, value in Tiny().state_dict().items()}


def test_strict_load_fills_every_weight_and_tolerates_absent_batch_counters():
    state = tiny_state()
    del state["norm.num_batches_tracked"]
    model = Tiny()
    load_state_dict_strictly(model, state)
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())


def test_strict_load_lists_missing_unexpected_and_misshapen_at_once():
    state = tiny_state()
    del state["conv.bias"]
    state["conv.extra"] = torch.zeros(1)
    state["norm.weight"] = torch.zeros(4)
    with pytest.raises(ValueError) as error:
        load_state_dict_strictly(Tiny(), state, hint="check the widths")
    assert str(error.value) == (
        "the checkpoint does not match this Tiny (check the widths); "
        "missing keys (1): ['conv.bias']; unexpected keys (1): ['conv.extra']; "
        "shape mismatches: ['norm.weight: checkpoint (4,), model (3,)']"
    )


def test_load_into_unwraps_a_state_dict_entry():
    table = KeyMap("tiny", (Rename("m.", ""),))
    state = {f"m.{key}": value for key, value in tiny_state().items()}
    model = Tiny()
    table.load_into(model, {"state_dict": state, "epoch": 3})
    assert torch.equal(model.conv.weight, state["m.conv.weight"])

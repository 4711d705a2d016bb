"""The tables of mmseg's self-attention heads: projection rules, the shared key/query
projection's two copies, and head settings read from a checkpoint's meta config."""

import pytest
import torch

from attnblocks import SelfAttentionBlock
from attnblocks.compat import (
    KeyMap,
    Rename,
    check_mmseg_shared_key_query,
    load_state_dict_strictly,
    mmseg_decode_head_settings,
    mmseg_projection_rules,
    mmseg_self_attention_rules,
)


def test_projection_rules_follow_build_project():
    assert mmseg_projection_rules("a.", "b.", 1, False) == (Rename("a.", "b."),)
    assert mmseg_projection_rules("a.", "b.", 1, True) == (
        Rename("a.conv.", "b.conv."), Rename("a.bn.", "b.norm.")
    )  # fmt: skip
    assert mmseg_projection_rules("a.", "b.", 2, True)[2:] == (
        Rename("a.1.conv.", "b.1.conv."), Rename("a.1.bn.", "b.1.norm.")
    )  # fmt: skip


def mmseg_layout(block, shared):
    """An mmseg-named state dict for ``block``: ``bn`` for ``norm``, and with ``shared``
    the key projection listed twice as mmseg's module under two names is."""
    state = {k.replace(".norm.", ".bn."): v.clone() for k, v in block.state_dict().items()}
    if shared:
        state.update({k.replace("key_project", "query_project"): v.clone()
                      for k, v in state.items() if k.startswith("key_project.")})  # fmt: skip
    return state


@pytest.mark.parametrize("shared", [False, True])
def test_a_self_attention_block_loads_from_mmsegs_layout(shared):
    block = SelfAttentionBlock(8, 8, 4, 8, share_key_query=shared, key_query_num_convs=2,
                               value_out_norm=True)  # fmt: skip
    rules = mmseg_self_attention_rules(
        "", "", key_query_num_convs=2, key_query_norm=True, value_out_num_convs=1,
        value_out_norm=True, with_out=True, share_key_query=shared,
    )  # fmt: skip
    state = mmseg_layout(block, shared)
    if shared:  # the copies differ: mmseg's loading applies query_project's last
        for key in [k for k in state if k.startswith("query_project.")]:
            if state[key].is_floating_point():
                state[key] = torch.randn_like(state[key])
    key_map = KeyMap("mmseg's block", rules, drop=("key_project.",) if shared else ())
    target = SelfAttentionBlock(8, 8, 4, 8, share_key_query=shared, key_query_num_convs=2,
                                value_out_norm=True)  # fmt: skip
    load_state_dict_strictly(target, key_map.convert(state))
    used = "query_project" if shared else "key_project"
    assert torch.equal(target.key_project[1].conv.weight, state[f"{used}.1.conv.weight"])
    assert torch.equal(target.key_project[0].norm.running_var, state[f"{used}.0.bn.running_var"])


def test_both_copies_of_a_shared_projection_are_checked():
    block = SelfAttentionBlock(8, 8, 4, 8, share_key_query=True)
    state = {f"stages.0.{k}": v for k, v in mmseg_layout(block, shared=True).items()}
    check_mmseg_shared_key_query(state, "stages.0.")  # complete: no error
    del state["stages.0.key_project.bn.running_mean"]
    with pytest.raises(ValueError, match=r"missing or misshapen: \['stages\.0\.key_project\.bn"
                                         r"\.running_mean'\]"):  # fmt: skip
        check_mmseg_shared_key_query(state, "stages.0.")
    state = {f"stages.0.{k}": v for k, v in mmseg_layout(block, shared=True).items()}
    state["stages.0.query_project.conv.weight"] = torch.zeros(4, 9, 1, 1)
    with pytest.raises(ValueError, match=r"stages\.0\.key_project\.conv\.weight: \(4, 8, 1, 1\) "
                                         r"but query_project \(4, 9, 1, 1\)"):  # fmt: skip
        check_mmseg_shared_key_query(state, "stages.0.")


def test_head_settings_from_the_meta_config():
    text = ("norm_cfg = dict(type='SyncBN', requires_grad=True)\n"
            "model = dict(type='EncoderDecoder', decode_head=dict(type='ISAHead', "
            "isa_channels=256, down_factor=(8, 8), norm_cfg=norm_cfg, loss=loss()))")  # fmt: skip
    settings = mmseg_decode_head_settings({"config": text}, "ISAHead")
    assert settings["down_factor"] == (8, 8) and settings["isa_channels"] == 256
    assert settings["norm_cfg"] == {"type": "SyncBN", "requires_grad": True}
    assert "loss" not in settings  # not a literal: left out, never evaluated
    assert mmseg_decode_head_settings({"config": text}, "EMAHead") == {}
    assert mmseg_decode_head_settings({}, "ISAHead") == {}
    assert mmseg_decode_head_settings({"config": "model = dict(type=, )"}, "ISAHead") == {}
    cascade = "model = dict(decode_head=[dict(type='FCNHead'), dict(type='EMAHead', num_stages=2)])"
    assert mmseg_decode_head_settings({"cfg": cascade}, "EMAHead") == {"type": "EMAHead",
                                                                       "num_stages": 2}  # fmt: skip

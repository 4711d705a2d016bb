"""PAM's value_split: the authors' fixture through split fused kernels, config and checks."""

import pytest
import torch

from attnblocks import PAM
from attnblocks.functional import _sdpa, last_attention_backend
from tests.reference import fill_rule_state_dict, load_arrays, relative_error


@pytest.mark.parametrize("value_split", [None, 1, 2, 8, 3])
def test_split_sdpa_matches_authors_fixture(value_split):
    arrays = load_arrays("pam")
    state = fill_rule_state_dict("pam")
    pam = PAM(state["value_conv.weight"].shape[0], backend="sdpa", value_split=value_split)
    pam.load_state_dict(state)
    x = arrays["input"].clone().requires_grad_()
    out = pam(x)
    (out * arrays["weight_for_loss"]).sum().backward()
    assert last_attention_backend() == "sdpa"
    if value_split is not None:
        assert _sdpa.last_sdpa_plan().parts == value_split
    assert relative_error(out, arrays["output"]) < 1e-4
    assert relative_error(x.grad, arrays["grad_input"]) < 1e-4
    for name, param in pam.named_parameters():
        if name != "key_conv.bias":  # true gradient 0: see test_pam.py
            assert relative_error(param.grad, arrays[f"grad.{name}"]) < 1e-4, name


def test_value_split_is_kept_and_shown():
    pam = PAM(32, backend="sdpa", value_split=4)
    assert pam.value_split == 4
    assert "value_split=4" in repr(pam)
    assert "value_split=None" in repr(PAM(32))


def test_value_split_reaches_auto_when_it_picks_sdpa(monkeypatch):
    monkeypatch.setenv("ATTNBLOCKS_BACKEND", "sdpa")  # what "auto" means here
    pam = PAM(32, value_split=2, gamma_init=0.5)
    pam(torch.randn(1, 32, 5, 6))
    assert last_attention_backend() == "sdpa" and _sdpa.last_sdpa_plan().parts == 2

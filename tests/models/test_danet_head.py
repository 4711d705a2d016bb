"""DANetHead (DualAttention + classifiers) against the authors' DANetHead fixture."""

import pytest
import torch

from attnblocks.compat import convert_original_head_state_dict
from attnblocks.models import DANetHead, DANetOutput
from tests.reference import fill_rule_state_dict, load_arrays, manifest, relative_error


def test_matches_authors_head_fixture():
    config, arrays = manifest()["head"], load_arrays("head")
    head = DANetHead(config["in_channels"], config["out_channels"]).eval()
    head.load_state_dict(convert_original_head_state_dict(fill_rule_state_dict("head")))
    with torch.no_grad():
        out = head(arrays["input"])
    assert isinstance(out, DANetOutput)
    assert relative_error(out.out, arrays["sasc"]) < 1e-4
    assert relative_error(out.pam, arrays["sa"]) < 1e-4
    assert relative_error(out.cam, arrays["sc"]) < 1e-4


def test_output_order_is_the_authors():
    assert DANetOutput._fields == ("out", "pam", "cam")  # their (sasc, sa, sc)


def test_dropout_is_active_in_training_only():
    head = DANetHead(32, 3, dropout=0.5)
    x = torch.randn(1, 32, 6, 6)
    head.eval()
    torch.testing.assert_close(head(x).out, head(x).out)
    head.train()
    with torch.no_grad():
        assert not torch.equal(head(x).out, head(x).out)


@pytest.mark.parametrize("shape", [(1, 32, 1, 1), (2, 32, 5, 7)])
def test_logits_keep_the_feature_size(shape):
    out = DANetHead(32, 4).eval()(torch.randn(shape))
    assert all(t.shape == (shape[0], 4, *shape[2:]) for t in out)

"""CCNet on a small backbone: logits, the head's layout, gradients, prediction, save/load.

That CCNet computes mmseg's CCNet is tests/models/test_ccnet_mmseg.py (the fixture).
"""

import json

import pytest
import torch
import torch.nn.functional as F

from attnblocks import CrissCrossAttention
from attnblocks.models import CCNet, CCNetHead
from tests.models.test_base import CONFIG, IMAGE, normalised


def small_ccnet(num_classes: int = 5, **kwargs) -> CCNet:
    torch.manual_seed(0)
    # zero_init_last=False: timm zeroes each block's last norm, which stops gradients inside blocks.
    model = CCNet("resnet18", num_classes, backbone_kwargs={"zero_init_last": False}, **kwargs)
    model.head.attention.gamma.data.fill_(0.5)  # with gamma = 0 the block is the identity
    return model


@pytest.fixture(scope="module")
def model():
    return small_ccnet()


@pytest.mark.parametrize("size", [(33, 47), (17, 9)])
def test_logits_are_one_tensor_at_the_input_size(model, size):
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, *size)


def test_head_layout_and_widths(model):
    head = model.head
    assert isinstance(head, CCNetHead) and head.in_channels == 512 and head.inter_channels == 128
    assert head.attention.recurrence == 2 and head.attention.key_channels == 16
    assert head.attention_in.conv.weight.shape == (128, 512, 3, 3)
    assert head.attention_out.conv.weight.shape == (128, 128, 3, 3)
    assert head.fuse.conv.weight.shape == (128, 512 + 128, 3, 3)  # backbone features + attention
    assert head.classifier.conv.weight.shape == (5, 128, 1, 1)
    assert head.classifier.drop.p == 0.1


def test_the_head_is_the_written_out_computation():
    head = CCNetHead(64, 3, recurrence=3, dropout=0.0).eval()
    head.attention.gamma.data.fill_(0.7)
    x = torch.randn(2, 64, 5, 6)
    once = CrissCrossAttention(16)  # the same weights, applied one at a time
    once.load_state_dict(head.attention.state_dict())
    with torch.no_grad():
        attended = head.attention_in(x)
        for _ in range(3):
            attended = once(attended)
        fused = head.fuse(torch.cat([x, head.attention_out(attended)], dim=1))
        torch.testing.assert_close(head(x), head.classifier.conv(fused))


def test_recurrence_reuses_one_block():
    once, twice = small_ccnet(recurrence=1).eval(), small_ccnet(recurrence=2).eval()
    assert once.state_dict().keys() == twice.state_dict().keys()
    assert all(torch.equal(value, twice.state_dict()[key])
               for key, value in once.state_dict().items())  # fmt: skip
    images = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        assert not torch.allclose(once(images), twice(images))


def test_every_parameter_gets_a_gradient(model):
    model.train()
    images = torch.randn(2, 3, 32, 40)
    target = torch.randint(0, 5, (2, 32, 40))
    target[:, :4] = 255  # void pixels
    model.zero_grad()
    F.cross_entropy(model(images), target, ignore_index=255).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_predict_and_predict_image():
    model = small_ccnet(num_classes=3, pretrained_config=CONFIG).train()
    labels = model.predict(normalised())
    assert not model.training and labels.shape == (1, 37, 53) and len(labels.unique()) > 1
    with torch.no_grad():
        assert torch.equal(labels, model(normalised()).argmax(dim=1))
    assert torch.equal(model.predict_image(IMAGE), labels[0])


def test_save_pretrained_and_from_pretrained(tmp_path):
    model = small_ccnet(recurrence=1, head_dropout=0.2, output_stride=16).eval()
    model.save_pretrained(tmp_path / "ccnet")
    config = json.loads((tmp_path / "ccnet" / "config.json").read_text())
    assert config["recurrence"] == 1 and config["head_dropout"] == 0.2
    assert config["output_stride"] == 16 and config["backbone"] == "resnet18"
    restored = CCNet.from_pretrained(tmp_path / "ccnet")
    assert not restored.training and restored.head.attention.recurrence == 1
    images = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(restored(images), model(images))


def test_bad_inputs_and_arguments(model):
    with pytest.raises(ValueError, match="takes 3-channel images, got 1 channels"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="output_stride must be 8 or 16"):
        CCNet("resnet18", output_stride=4)
    with pytest.raises(ValueError, match="recurrence must be a positive int, got 0"):
        CCNet("resnet18", recurrence=0)
    with pytest.raises(ValueError, match=r"in_channels // 4 is 0 for in_channels=3"):
        CCNetHead(3, 2)
    with pytest.raises(ValueError, match=r"CCNetHead was built for 64 channels, got .* 8 chan"):
        CCNetHead(64, 2)(torch.randn(1, 8, 4, 4))
    assert CCNetHead(3, 2, inter_channels=8).inter_channels == 8

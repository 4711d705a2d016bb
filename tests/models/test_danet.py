"""DANet: the authors' network end to end, shapes, gradients, prediction, input checks."""

import pytest
import torch

from attnblocks.losses import DANetLoss
from attnblocks.models import DANet, DANetOutput
from tests.reference import fill_rule_state_dict, load_arrays, manifest, relative_error


def test_matches_authors_resnet50_fixture():
    config, arrays = manifest()["danet_resnet50"], load_arrays("danet_resnet50")
    model = DANet.from_original(
        fill_rule_state_dict("danet_resnet50"),
        backbone="resnet50",  # their plain 7x7 stem
        num_classes=config["num_classes"],
        multi_grid=tuple(config["multi_grid_dilations"]),
    ).eval()
    assert model.align_corners and model.output_stride == config["output_stride"]
    with torch.no_grad():
        out = model(arrays["input"])
    assert isinstance(out, DANetOutput)
    for ours, key in zip(out, ("sasc", "sa", "sc")):
        assert ours.shape == arrays[key].shape
        assert relative_error(ours, arrays[key]) < 1e-4, key


@pytest.fixture(scope="module")
def small_danet():
    torch.manual_seed(0)
    # zero_init_last=False: timm zeroes each block's last norm, which stops gradients inside blocks.
    return DANet("resnet18", num_classes=5, backbone_kwargs={"zero_init_last": False})


@pytest.mark.parametrize("size", [(64, 64), (65, 97), (33, 47), (17, 9)])
def test_logits_have_the_input_size(small_danet, size):
    small_danet.eval()
    with torch.no_grad():
        out = small_danet(torch.randn(2, 3, *size))
    assert all(t.shape == (2, 5, *size) for t in out)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_head_sees_features_at_the_output_stride(output_stride):
    model = DANet("resnet18", num_classes=3, output_stride=output_stride).eval()
    seen = []
    model.head.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 32))
    assert seen == [torch.Size([1, 512, 64 // output_stride, 32 // output_stride])]


def test_every_parameter_gets_a_gradient_from_the_loss(small_danet):
    small_danet.train()
    for block in (small_danet.head.attention.pam, small_danet.head.attention.cam):
        block.gamma.data.fill_(0.5)  # with gamma = 0 the projections inside PAM get zero gradient
    images = torch.randn(2, 3, 48, 40)
    target = torch.randint(0, 5, (2, 48, 40))
    target[:, :4] = 255  # void pixels
    small_danet.zero_grad()
    DANetLoss()(small_danet(images), target).backward()
    for name, param in small_danet.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_predict_returns_labels_in_eval_mode(small_danet):
    small_danet.train()
    images = torch.randn(2, 3, 40, 56)
    labels = small_danet.predict(images)
    assert not small_danet.training
    assert labels.shape == (2, 40, 56) and labels.dtype == torch.int64
    with torch.no_grad():
        assert torch.equal(labels, small_danet(images).out.argmax(dim=1))


def test_configuration_reaches_the_head():
    model = DANet(
        "resnet18", num_classes=4, attention_backend="chunked", chunk_size=32, cam_mode="paper"
    )
    assert model.head.attention.pam.backend == "chunked"
    assert model.head.attention.pam.chunk_size == 32
    assert model.head.attention.cam.mode == "paper"
    assert model.head.attention.in_channels == 512 and model.head.attention.inter_channels == 128


def test_bad_inputs_and_arguments(small_danet):
    with pytest.raises(ValueError, match="takes 3-channel images, got 1 channels"):
        small_danet(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"DANet input must be a 4D tensor"):
        small_danet(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="output_stride must be 8 or 16"):
        DANet("resnet18", output_stride=4)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        DANet("resnet18", num_classes=0)


def test_in_chans_from_backbone_kwargs():
    model = DANet("resnet18", num_classes=2, backbone_kwargs={"in_chans": 1}).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).out.shape == (1, 2, 32, 32)

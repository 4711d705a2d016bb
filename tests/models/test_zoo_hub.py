"""Every registered model survives save_pretrained / from_pretrained: same class, same labels."""

import pytest
import torch

from attnblocks.models import MMSEG_MODELS
from attnblocks.models.base import main_logits


@pytest.mark.parametrize("name", sorted(MMSEG_MODELS))
def test_the_folder_rebuilds_the_same_model(name, tmp_path):
    cls = MMSEG_MODELS[name]
    backbone = "hrnet_w18_small" if name == "ocrnet" else "resnet18"
    torch.manual_seed(0)
    model = cls(backbone=backbone, num_classes=5).eval()
    for module in model.modules():  # trained-looking statistics, so that every buffer counts
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path)
    restored = MMSEG_MODELS[name].from_pretrained(tmp_path)
    assert type(restored) is cls and not restored.training
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(main_logits(restored(images)), main_logits(model(images)))

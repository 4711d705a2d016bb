"""The shared scaffold: predict_image with the pretrained config, Hub-style save/load, no hub."""

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from attnblocks.inference import predict_labels
from attnblocks.models import CCNet, DANet
from attnblocks.pretrained import PretrainedConfig

REPO = Path(__file__).resolve().parents[2]
CONFIG = PretrainedConfig(
    class_names=("sky", "sea", "sand"), palette=((0, 0, 255), (0, 128, 255), (255, 220, 0)),
    mean=(100.0, 110.0, 120.0), std=(50.0, 60.0, 70.0), dataset=None,
)  # fmt: skip
IMAGE = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)


def small_danet(**kwargs):
    torch.manual_seed(0)
    model = DANet("resnet18", num_classes=3, pretrained_config=CONFIG, **kwargs).eval()
    for block in (model.head.attention.pam, model.head.attention.cam):
        block.gamma.data.fill_(0.5)  # make the attention count
    return model


def normalised(config=CONFIG):
    """The image as the model's input, computed here in float64 from the config's numbers."""
    mean = torch.tensor(config.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float64).view(1, 3, 1, 1)
    pixels = torch.from_numpy(IMAGE).permute(2, 0, 1).unsqueeze(0).double()
    return ((pixels - mean) / std).float()


def test_predict_image_normalises_with_the_config():
    model = small_danet()
    labels = model.predict_image(IMAGE)
    assert labels.shape == (37, 53) and labels.dtype == torch.int64
    assert torch.equal(labels, model.predict(normalised())[0])
    assert len(labels.unique()) > 1  # a real labelling, not a constant


def cv2_resized(size):
    """IMAGE resized by OpenCV's INTER_LINEAR on uint8, as mmcv.imresize does (test extra)."""
    cv2 = pytest.importorskip("cv2")
    return cv2.resize(IMAGE, size[::-1], interpolation=cv2.INTER_LINEAR)


def normalised_pixels(pixels, config=CONFIG):
    """(H, W, 3) uint8 RGB normalised in float64 from the config's numbers, as (1, 3, H, W)."""
    mean = torch.tensor(config.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float64).view(1, 3, 1, 1)
    return ((torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).double() - mean) / std).float()


def test_predict_image_resizes_the_uint8_image_before_normalising_it():
    # mmseg: Resize(scale, keep_ratio=True) on the uint8 image with OpenCV, then normalisation
    model = small_danet()
    model.pretrained_config = PretrainedConfig(**{**CONFIG.to_dict(), "image_scale": (80, 60)})
    factor = min(80 / 53, 60 / 37)  # long edge 53 -> at most 80, short edge 37 -> at most 60
    size = (int(37 * factor + 0.5), int(53 * factor + 0.5))
    x = normalised_pixels(cv2_resized(size))
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    labels = model.predict_image(IMAGE)
    hook.remove()
    torch.testing.assert_close(seen[0], x, rtol=0, atol=1e-5)  # the uint8 pixels, exactly
    with torch.no_grad():  # the logits resized to the image's size, then their argmax
        logits = F.interpolate(model(x).out, size=(37, 53), mode="bilinear")
    assert torch.equal(labels, logits.argmax(dim=1)[0])
    _, scores = model.predict_image(IMAGE, return_scores=True)
    torch.testing.assert_close(scores, logits[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(model.predict_image(IMAGE, resize=False), model.predict(normalised())[0])


def test_predict_image_slides_the_configs_window_unless_told_otherwise():
    model = small_danet()
    model.pretrained_config = PretrainedConfig(**{**CONFIG.to_dict(), "crop_size": (32, 40),
                                                  "stride": (16, 20)})  # fmt: skip
    windows = predict_labels(model, normalised(), crop_size=(32, 40), stride=(16, 20))[0]
    assert torch.equal(model.predict_image(IMAGE), windows)
    assert not torch.equal(windows, model.predict(normalised())[0])  # the windows made a difference
    whole = model.predict_image(IMAGE, crop_size=None)
    assert torch.equal(whole, model.predict(normalised())[0])


def test_predict_image_test_time_augmentation_is_mmsegs():
    # tta_pipeline: each ratio resizes the image as read (uint8, OpenCV), each view mirrored too;
    # logits flipped back and resized to the image, softmax averaged (SegTTAModel)
    model = small_danet()
    model.pretrained_config = PretrainedConfig(**{**CONFIG.to_dict(), "image_scale": (80, 60)})
    expected = torch.zeros(1, 3, 37, 53)
    for size in [(37, 53), (19, 27)]:  # ratios 1.0 and 0.5 of 37 x 53 (no test resize)
        x = normalised_pixels(cv2_resized(size))
        for mirrored in (False, True):
            with torch.no_grad():
                logits = model(x.flip(-1) if mirrored else x).out
            logits = logits.flip(-1) if mirrored else logits
            expected += F.interpolate(logits, size=(37, 53), mode="bilinear").softmax(dim=1) / 4
    labels, scores = model.predict_image(IMAGE, scales=(1.0, 0.5), flip=True, crop_size=None,
                                         return_scores=True)  # fmt: skip
    torch.testing.assert_close(scores, expected[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(labels, expected.argmax(dim=1)[0])


def test_predict_image_takes_a_read_only_array_without_a_warning():
    from PIL import Image

    model = small_danet()
    pixels = np.asarray(Image.fromarray(IMAGE))  # numpy's view of a PIL image is read-only
    assert not pixels.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "The given NumPy array is not writable"
        labels = model.predict_image(pixels)
    assert torch.equal(labels, model.predict_image(IMAGE))


def test_predict_image_needs_an_rgb_model():
    model = DANet("resnet18", num_classes=2, backbone_kwargs={"in_chans": 1})
    with pytest.raises(ValueError, match="takes RGB images; this model takes 1-channel input"):
        model.predict_image(IMAGE)


# --- save_pretrained / from_pretrained (local folders: no network) ---------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A bottleneck DANet with multi-grid, output stride 16 and local ImageNet weights, saved."""
    folder = tmp_path_factory.mktemp("hub")
    weights = folder / "resnet26_imagenet.pth"
    torch.save(timm.create_model("resnet26").state_dict(), weights)
    torch.manual_seed(0)
    model = DANet(
        "resnet26", num_classes=3, output_stride=16, multi_grid=(1, 2),
        backbone_weights=str(weights), attention_backend="chunked", chunk_size=64,
        head_dropout=0.2, pretrained_config=CONFIG, backbone_kwargs={"zero_init_last": False},
    ).eval()  # fmt: skip
    model.head.attention.cam.gamma.data.fill_(0.3)
    model.weights_source = "https://example.org/danet_sky_sea_sand.pth"
    model.save_pretrained(folder / "danet")
    weights.unlink()  # the saved model must not need the ImageNet file any more
    return model, folder / "danet"


def test_saved_folder_holds_config_json_and_safetensors(saved):
    _, folder = saved
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["backbone"] == "resnet26" and config["num_classes"] == 3
    assert config["output_stride"] == 16 and config["multi_grid"] == [1, 2]
    assert config["backbone_weights"] is None and config["pretrained_backbone"] is False
    assert config["pretrained_config"]["class_names"] == ["sky", "sea", "sand"]
    assert config["pretrained_config"]["mean"] == [100.0, 110.0, 120.0]
    assert config["attention_backend"] == "chunked" and config["head_dropout"] == 0.2


def test_from_pretrained_gives_identical_outputs(saved):
    model, folder = saved
    restored = DANet.from_pretrained(folder)
    assert not restored.training and restored.pretrained_config == CONFIG
    assert restored.head.attention.pam.backend == "chunked"
    assert restored.backbone.layer4[1].conv2.dilation == (2, 2)  # multi-grid rebuilt
    images = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        for ours, theirs in zip(restored(images), model(images)):
            assert torch.equal(ours, theirs)
    assert torch.equal(restored.predict_image(IMAGE), model.predict_image(IMAGE))


def test_from_pretrained_keyword_arguments_override_the_config(saved):
    _, folder = saved
    assert (
        DANet.from_pretrained(folder, attention_backend="bmm").head.attention.pam.backend == "bmm"
    )


def test_from_pretrained_is_strict(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder = saved
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((folder / "config.json").read_text())
    weights = load_file(folder / "model.safetensors")
    del weights["head.fused_classifier.conv.bias"]
    save_file(weights, broken / "model.safetensors")
    with pytest.raises(RuntimeError, match=r"head\.fused_classifier\.conv\.bias"):
        DANet.from_pretrained(broken)


def test_the_folder_records_the_class_and_the_source_of_the_weights(saved):
    model, folder = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["model_class"] == "DANet" and config["weights_source"] == model.weights_source
    assert DANet.from_pretrained(folder).weights_source == model.weights_source  # kept on


def test_from_pretrained_of_another_class_is_one_line_naming_the_right_one(tmp_path):
    CCNet("resnet18", num_classes=3).save_pretrained(tmp_path / "ccnet")
    with pytest.raises(ValueError) as raised:
        DANet.from_pretrained(tmp_path / "ccnet")
    message = str(raised.value)
    assert message == (f"{tmp_path / 'ccnet'} holds a saved CCNet, not a DANet: load it with "
                       "CCNet.from_pretrained")  # fmt: skip


def test_a_folder_without_config_json_is_refused(saved, tmp_path):
    _, folder = saved
    bare = tmp_path / "weights-only"
    bare.mkdir()
    (bare / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"weights-only has no config\.json"):
        DANet.from_pretrained(bare)


def test_the_model_card_describes_the_model(saved):
    model, folder = saved
    card = (folder / "README.md").read_text()
    assert "More Information Needed" not in card
    assert card.startswith("---\n") and "library_name: attnblocks" in card
    facts = [
        "`attnblocks.models.DANet`",
        "timm `resnet26`, output stride 16, multi-grid (1, 2)",
        "| classes | 3: sky, sea, sand |",
        f"| source checkpoint | {model.weights_source} |",
        "mean (100.0, 110.0, 120.0)",
        'DANet.from_pretrained("FOLDER_OR_HUB_ID")',
    ]
    for fact in facts:
        assert fact in card, fact


def test_without_huggingface_hub_the_package_works():
    script = textwrap.dedent(
        """
        import sys

        class NoHub:  # a meta-path finder that makes the hub packages unimportable
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("huggingface_hub", "safetensors"):
                    raise ImportError(f"blocked: {name}")

        sys.meta_path.insert(0, NoHub())
        import numpy as np
        import torch
        import attnblocks
        from attnblocks.models import HUB_AVAILABLE, DANet

        assert not HUB_AVAILABLE and "huggingface_hub" not in sys.modules
        model = DANet("resnet18", num_classes=3)
        assert model(torch.randn(1, 3, 32, 32)).out.shape == (1, 3, 32, 32)
        assert model.predict_image(np.zeros((20, 30, 3), np.uint8)).shape == (20, 30)
        for call in (lambda: model.save_pretrained("x"), lambda: DANet.from_pretrained("x")):
            try:
                call()
            except ImportError as error:
                assert "pip install huggingface_hub safetensors" in str(error)
            else:
                raise AssertionError("no ImportError")
        import os
        assert not os.path.exists("x")  # nothing written before the ImportError
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, env={"PYTHONPATH": str(REPO), "PATH": ""})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


class _TwoLevelHead(torch.nn.Module):
    """Records what it is fed; classifies the deepest level."""

    def __init__(self, channels, num_classes):
        super().__init__()
        self.classifier = torch.nn.Conv2d(channels, num_classes, 1)
        self.seen = None

    def forward(self, features):
        self.seen = features
        return self.classifier(features[-1])


def test_a_head_that_declares_levels_gets_their_maps_shallowest_first():
    from attnblocks.models import SegmentationModel

    class TwoLevels(SegmentationModel):
        feature_levels = (3, 4)  # ResNet layer3 and layer4: mmseg's in_index (2, 3)

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.head = _TwoLevelHead(self.encoder_channels, self.num_classes)

    model = TwoLevels(backbone="resnet18", num_classes=2).eval()
    assert model.feature_channels == [256, 512]
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        out = model(x)
    reference = timm.create_model("resnet18", features_only=True, output_stride=8)
    reference.load_state_dict(model.backbone.state_dict(), strict=False)
    with torch.no_grad():
        expected = reference.eval()(x)
    assert [t.shape for t in model.head.seen] == [expected[3].shape, expected[4].shape]
    assert torch.allclose(model.head.seen[0], expected[3]) and out.shape == (1, 2, 32, 48)
    assert "twolevels" not in __import__("attnblocks").models.MMSEG_MODELS  # no mmseg_model

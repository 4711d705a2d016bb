"""examples/segment.py: label map and overlay with legend, from mmseg, saved folder or train.py."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from attnblocks.models import CCNet, DANet
from attnblocks.pretrained import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    PretrainedConfig,
    bit_palette,
)
from examples import segment
from examples.datasets import dataset_palette
from tests.compat.mmseg_reference import CCNET, DANET, fixture_checkpoint

IMAGE = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
HEADS = {DANET: "DAHead", CCNET: "CCHead"}


def mmseg_file(path, fixture=DANET):
    """The fixture's weights saved as mmseg releases them, with a config text in the meta."""
    checkpoint = fixture_checkpoint(fixture)
    checkpoint["meta"]["config"] = (
        f"model = dict(type='EncoderDecoder', decode_head=dict(type='{HEADS[fixture]}'))"
    )
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "street.png"
    Image.fromarray(IMAGE).save(path)
    return path


def read(path):
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


@pytest.mark.parametrize("flags", [["--mmseg"], []], ids=["--mmseg", "recognised"])
def test_mmseg_checkpoint_gives_cityscapes_colours_and_a_legend(tmp_path, image_file, flags):
    checkpoint = mmseg_file(tmp_path / "danet_mmseg.pth")
    # --no-resize: Cityscapes' test resize would enlarge the tiny image to 1024 rows
    args = [str(image_file), "--checkpoint", str(checkpoint), *flags, "--no-resize",
            "--out", str(tmp_path)]  # fmt: skip
    result = segment.main(args)
    expected = DANet.from_mmseg(checkpoint).predict_image(IMAGE, resize=False)
    assert torch.equal(result["labels_map"], expected)
    colours = read(result["labels"])
    assert colours.shape == (45, 70, 3)
    palette = np.array(CITYSCAPES_PALETTE, dtype=np.uint8)
    assert np.array_equal(colours, palette[expected.numpy()])  # the official colour of each label
    assert result["classes"] == [CITYSCAPES_CLASSES[i] for i in expected.unique().tolist()]
    overlay = read(result["overlay"])
    assert overlay.shape[0] >= 45 and overlay.shape[1] > 70  # the legend panel on the right
    blended = (0.5 * IMAGE + 0.5 * colours.astype(float)).round()
    assert np.abs(overlay[:45, :70].astype(float) - blended).max() <= 1  # alpha 0.5


def test_saved_folder_with_whole_image_prediction(tmp_path, image_file):
    torch.manual_seed(0)
    config = PretrainedConfig(class_names=("a", "b"), palette=((255, 0, 0), (0, 0, 255)))
    model = DANet("resnet18", num_classes=2, pretrained_config=config).eval()
    model.save_pretrained(tmp_path / "model")
    result = segment.main([str(image_file), "--checkpoint", str(tmp_path / "model"),
                           "--whole", "--out", str(tmp_path / "out")])  # fmt: skip
    assert torch.equal(result["labels_map"], model.predict_image(IMAGE))
    assert set(map(tuple, np.unique(read(result["labels"]).reshape(-1, 3), axis=0))) <= {
        (255, 0, 0), (0, 0, 255)}  # fmt: skip


def test_train_checkpoint_brings_its_class_names_and_its_datasets_colours(trained, tmp_path,
                                                                         image_file):  # fmt: skip
    checkpoint = torch.load(trained / "checkpoint.pt", weights_only=False)
    result = segment.main([str(image_file), "--checkpoint", str(trained / "checkpoint.pt"),
                           "--whole", "--out", str(tmp_path)])  # fmt: skip
    assert set(result["classes"]) <= set(checkpoint["classes"]) and result["classes"]
    # the synthetic scenes' palette, as in train.py's predictions.png and evaluate.py's PNGs
    palette = np.array(dataset_palette("synthetic", len(checkpoint["classes"])), dtype=np.uint8)
    assert np.array_equal(read(result["labels"]), palette[result["labels_map"].numpy()])


@pytest.mark.parametrize(
    ("file_name", "flags"),
    [
        # a release's file name says CCNet by itself
        ("ccnet_r50-d8_512x1024_40k_cityscapes_20200616_142517-4123f401.pth", []),
        ("my_weights.pth", ["--model", "ccnet"]),  # any other name: told
    ],
)
def test_mmseg_ccnet_checkpoint(tmp_path, image_file, file_name, flags):
    checkpoint = tmp_path / file_name
    torch.save(fixture_checkpoint(CCNET), checkpoint)  # meta without a readable config
    result = segment.main([str(image_file), "--checkpoint", str(checkpoint), "--no-resize",
                           "--out", str(tmp_path), *flags])  # fmt: skip
    expected = CCNet.from_mmseg(checkpoint).predict_image(IMAGE, resize=False)
    assert torch.equal(result["labels_map"], expected)


def test_ccnet_saved_folder_and_the_danet_only_option(tmp_path, image_file):
    torch.manual_seed(0)
    config = PretrainedConfig(class_names=("a", "b", "c"), palette=bit_palette(3))
    model = CCNet("resnet18", num_classes=3, pretrained_config=config).eval()
    model.save_pretrained(tmp_path / "model")
    args = [
        str(image_file),
        "--checkpoint",
        str(tmp_path / "model"),
        "--whole",
        "--out",
        str(tmp_path / "out"),
    ]  # fmt: skip (the folder's config.json says CCNet)
    assert torch.equal(segment.main(args)["labels_map"], model.predict_image(IMAGE))
    with pytest.raises(SystemExit, match="--attention-backend: CCNet takes no 'attention_backend'"):
        segment.main([*args, "--attention-backend", "chunked"])
    with pytest.raises(SystemExit, match="holds a saved CCNet, not a DANet"):
        segment.main([*args, "--model", "danet"])


def test_model_args_reach_the_constructor(tmp_path, image_file, monkeypatch):
    checkpoint = mmseg_file(tmp_path / "danet_mmseg.pth")
    args = [str(image_file), "--checkpoint", str(checkpoint), "--no-resize", "--whole",
            "--out", str(tmp_path)]  # fmt: skip
    built = []
    load_model = segment.load_model
    monkeypatch.setattr(segment, "load_model", lambda a: built.append(load_model(a)) or built[-1])
    segment.main([*args, "--model-arg", "chunk_size=64", "--attention-backend", "chunked"])
    pam = built[0].head.attention.pam
    assert (pam.backend, pam.chunk_size) == ("chunked", 64)
    # the class is known only once from_mmseg has read the file: its constructor refuses
    with pytest.raises(SystemExit, match=r"unexpected keyword argument 'recurrence'"):
        segment.main([*args, "--model-arg", "recurrence=2"])
    with pytest.raises(SystemExit, match=r"--model-arg: DANet takes no 'recurrence'"):
        segment.main([*args, "--model", "danet", "--model-arg", "recurrence=2"])


def expect_one_line_error(capsys, argv, pattern):
    with pytest.raises(SystemExit) as raised:
        segment.main(argv)
    message = str(raised.value.code)
    assert re.fullmatch(pattern, message.removeprefix("segment.py: error: ")), message
    assert "\n" not in message and "Traceback" not in capsys.readouterr().err


def test_missing_checkpoint_and_missing_image(tmp_path, image_file, capsys):
    expect_one_line_error(capsys, [str(image_file), "--checkpoint", str(tmp_path / "none.pt")],
                          r"no checkpoint at .*none\.pt: expected .*")  # fmt: skip
    checkpoint = mmseg_file(tmp_path / "danet.pth")
    expect_one_line_error(capsys, [str(tmp_path / "nope.png"), "--checkpoint", str(checkpoint)],
                          r"no image at .*nope\.png")  # fmt: skip
    (tmp_path / "notes.png").write_text("not a picture")
    expect_one_line_error(capsys, [str(tmp_path / "notes.png"), "--checkpoint", str(checkpoint)],
                          r"cannot read the image .*notes\.png: .*")  # fmt: skip


def test_a_checkpoint_that_is_text_or_truncated(tmp_path, image_file, capsys):
    text = tmp_path / "weights.pth"
    text.write_text("<html>Not Found</html>")
    expect_one_line_error(capsys, [str(image_file), "--checkpoint", str(text)],
                          r".*weights\.pth is not a PyTorch checkpoint: .*")  # fmt: skip
    truncated = mmseg_file(tmp_path / "danet.pth")
    truncated.write_bytes(truncated.read_bytes()[:5000])
    expect_one_line_error(capsys, [str(image_file), "--checkpoint", str(truncated)],
                          r".*danet\.pth is truncated or damaged.*")  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--alpha", "3"], "--alpha"), (["--scales", "0"], "--scales"),
     (["--crop-size", "-4"], "--crop-size"), (["--device", "cuda:99"], "--device")],
)  # fmt: skip
def test_bad_values_are_refused_by_name(flags, named, capsys):
    with pytest.raises(SystemExit):
        segment.parse_args(["image.png", "--checkpoint", "x", *flags])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert named in error and "Traceback" not in error


def test_help_documents_every_option(capsys):
    from tests.examples.test_train import assert_each_default_shown_once

    with pytest.raises(SystemExit):
        segment.parse_args(["--help"])
    assert_each_default_shown_once(capsys.readouterr().out)

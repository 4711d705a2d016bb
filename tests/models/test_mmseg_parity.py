"""predict_image against mmsegmentation 1.2.2's own ``inference_model`` on real photographs.

The fixtures (``tests/data/mm_reference/pipeline_*.npz``, made by
``generate/make_pipeline_fixtures.py`` from ``generate/pipeline_cases.json``) hold what
mmseg's test pipeline gave for three photographs of ``tests/data/photos`` (a strip that
the test resize leaves lower than the sliding window, a panorama, a portrait JPEG with an
EXIF rotation): the uint8 image its data preprocessor received, its labels and its logits
at sampled pixels. Two releases, with weights by the fixture rule: DANet-R50 ADE20K
(whole image) and CCNet-R50 Cityscapes 769x769 (sliding window, ``align_corners=True``),
each with its test resize and window scaled down (``test_scale``/``test_cfg`` of the
cases) to keep the time small. The checkpoints carry the meta mmseg writes (its config
text, its dataset meta): the models get their test setup from it alone.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from attnblocks.models import CCNet, DANet, from_mmseg
from attnblocks.pretrained import read_rgb, resize_uint8
from tests.reference import MM_DATA_DIR, fill_rule, relative_error

REPO = MM_DATA_DIR.parents[2]
CASES = json.loads((MM_DATA_DIR / "pipeline_manifest.json").read_text())
RELEASES = {"danet": "danet/danet_r50-d8_4xb4-80k_ade20k-512x512.py",
            "ccnet": "ccnet/ccnet_r50-d8_4xb2-40k_cityscapes-769x769.py"}  # fmt: skip


def checkpoint_of(release: str) -> dict:
    """The release's fixture checkpoint: fill-rule weights and mmseg's meta."""
    case = next(c for c in CASES.values() if c["config"] == RELEASES[release])
    return {"meta": case["meta"], "state_dict": fill_rule(case["keys"], case["seed"])}


@pytest.fixture(scope="module")
def models():
    """Each release's model, built once, from its checkpoint dict (no file name to go by)."""
    return {release: from_mmseg(checkpoint_of(release)) for release in RELEASES}


def test_the_models_take_their_test_setup_from_the_meta(models):
    danet, ccnet = models["danet"], models["ccnet"]
    assert type(danet) is DANet and type(ccnet) is CCNet
    assert not danet.align_corners and danet.pretrained_config.crop_size is None
    assert danet.pretrained_config.image_scale == (512, 128)  # the scaled-down (2048, 512)
    assert ccnet.align_corners and ccnet.pretrained_config.image_scale == (257, 129)
    window = (ccnet.pretrained_config.crop_size, ccnet.pretrained_config.stride)
    assert window == ((97, 97), (65, 65))  # 769 and 513, scaled down
    assert danet.pretrained_config.palette[:2] == ((120, 120, 120), (180, 120, 120))


@pytest.mark.parametrize("name", sorted(CASES))
def test_predict_image_gives_mmsegs_labels_and_logits(models, name):
    case = CASES[name]
    model = models[next(r for r, config in RELEASES.items() if config == case["config"])]
    with np.load(MM_DATA_DIR / f"{name}.npz") as arrays:
        reference = {key: torch.from_numpy(arrays[key]) for key in arrays.files}
    image = REPO / case["image"]
    # the image mmseg's data preprocessor received: read (EXIF applied) and resized as uint8
    pixels = read_rgb(image)
    resized = resize_uint8(pixels, model.pretrained_config.test_size(*pixels.shape[-2:]))
    assert torch.equal(resized, reference["inputs"].flip(0))  # mmseg's are BGR
    labels, scores = model.predict_image(image, return_scores=True)
    assert labels.shape == reference["labels"].shape
    agreement = (labels == reference["labels"].long()).double().mean().item()
    rows, cols = reference["logits_at"].long().unbind(1)
    error = relative_error(scores[:, rows, cols], reference["logits"])
    print(f"{name}: labels agree on {100 * agreement:.3f} %, logits relative error {error:.1e}")
    assert agreement >= 0.999 and error < 1e-4


def test_examples_segment_gives_mmsegs_labels(tmp_path):
    from examples import segment

    checkpoint = tmp_path / "danet-ade20k.pth"  # a file name that is no release's
    torch.save(checkpoint_of("danet"), checkpoint)
    name = "pipeline_danet_ade20k_portrait"
    with np.load(MM_DATA_DIR / f"{name}.npz") as arrays:
        expected = torch.from_numpy(arrays["labels"]).long()
    result = segment.main([str(REPO / CASES[name]["image"]), "--mmseg", "--checkpoint",
                           str(checkpoint), "--out", str(tmp_path / "out")])  # fmt: skip
    assert result["labels_map"].shape == expected.shape == (128, 96)  # upright: EXIF applied
    assert (result["labels_map"] == expected).double().mean().item() >= 0.999
    with Image.open(result["overlay"]) as picture:  # the photo upright under the colours
        assert picture.height == 128 and picture.width > 96

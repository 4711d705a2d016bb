"""How closely predict_image follows mmseg on fixtures of make_pipeline_fixtures.py.

Runs with this package (no OpenMMLab code): usage, from the repository root,
    python tests/data/mm_reference/generate/parity_report.py FIXTURE_DIR
For each case of FIXTURE_DIR/pipeline_manifest.json: the model built once per release
from the fill-rule weights and the meta mmseg wrote, then whether the resized uint8 image
equals the one mmseg's data preprocessor received, the share of pixels whose label equals
mmseg's, the relative L2 error of the logits at the sampled pixels, and the time.
tests/models/test_mmseg_parity.py checks the committed (scaled-down) fixtures this way;
this script also serves fixtures made at the releases' own test sizes.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from attnblocks.models import from_mmseg
from attnblocks.pretrained import read_rgb, resize_uint8
from tests.reference import fill_rule, relative_error


def main() -> None:
    folder = Path(sys.argv[1])
    cases = json.loads((folder / "pipeline_manifest.json").read_text())
    models = {}
    for name, case in cases.items():
        if case["config"] not in models:
            checkpoint = {"meta": case["meta"], "state_dict": fill_rule(case["keys"], case["seed"])}
            models[case["config"]] = from_mmseg(checkpoint)
        model = models[case["config"]]
        with np.load(folder / f"{name}.npz") as arrays:
            reference = {key: torch.from_numpy(arrays[key]) for key in arrays.files}
        pixels = read_rgb(case["image"])
        resized = resize_uint8(pixels, model.pretrained_config.test_size(*pixels.shape[-2:]))
        same_input = torch.equal(resized, reference["inputs"].flip(0))
        start = time.perf_counter()
        labels, scores = model.predict_image(case["image"], return_scores=True)
        seconds = time.perf_counter() - start
        agreement = (labels == reference["labels"].long()).double().mean().item()
        rows, cols = reference["logits_at"].long().unbind(1)
        error = relative_error(scores[:, rows, cols], reference["logits"])
        print(
            f"{name}: image {tuple(pixels.shape[-2:])} -> {tuple(resized.shape[-2:])}, "
            f"window {model.pretrained_config.crop_size}, input equal {same_input}, "
            f"labels {100 * agreement:.3f} %, logits rel. error {error:.1e}, {seconds:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()

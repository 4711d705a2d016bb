"""mmsegmentation 1.2.2's own inference (`mmseg.apis.inference_model`: its test pipeline,
resize, whole or sliding-window decoding) on real photographs, for parity of predict_image.

Run in the venv of make_mm_fixtures.py. usage: make_pipeline_fixtures.py OUT_DIR CASES_JSON
CASES_JSON: {"name": {"config": "danet/...py", "image": "path.jpg", "seed": 7,
                      "test_scale": [w, h] or absent, "test_cfg": {...} or absent}, ...}
`test_scale` replaces the scale of the test pipeline's Resize and `test_cfg` the model's
(both in the config mmseg runs, so they are also in the meta written below): the parity
tests run the releases' pipelines at reduced sizes to keep their time small.
Weights by make_mm_fixtures.fill_state_dict(keys, seed) over the segmentor's state dict
(auxiliary head included, as in a release). Writes <name>.npz with
- `labels` (H, W) int16, mmseg's `pred_sem_seg`, at the image's size;
- `margin` (H, W) float16: the gap between the two largest logits (small: a near tie);
- `inputs` (3, h, w) uint8: the image the data preprocessor received (BGR, after
  LoadImageFromFile and Resize);
- `logits` (K, N) float32 at `logits_at` (N, 2) int32 (row, column) pixel positions, N
  drawn with numpy.random.default_rng(seed): `seg_logits` sampled (all of it takes
  hundreds of MB for 150 classes at image size);
and pipeline_manifest.json: per case the case, the state-dict `keys`, the `test_cfg` and
`test_pipeline` that ran, and `meta`: what mmengine's runner writes into a checkpoint's
meta (`cfg`: the config's pretty_text, `dataset_meta`: the test dataset's METAINFO).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import mmstub  # noqa: F401
from make_mm_fixtures import CONFIGS, fill_state_dict, keys_of

SAMPLED_PIXELS = 256


def configure(case):
    from mmengine import Config

    cfg = Config.fromfile(str(CONFIGS / case["config"]))
    bn = dict(type="BN", requires_grad=True)
    cfg.model.backbone.norm_cfg = bn
    heads = (
        cfg.model.decode_head
        if isinstance(cfg.model.decode_head, (list, tuple))
        else [cfg.model.decode_head]
    )
    for h in heads:
        h.norm_cfg = bn
    if cfg.model.get("auxiliary_head"):
        cfg.model.auxiliary_head.norm_cfg = bn
    if case.get("test_scale"):
        for pipeline in (
            cfg.test_pipeline,
            cfg.val_dataloader.dataset.pipeline,
            cfg.test_dataloader.dataset.pipeline,
        ):
            for step in pipeline:
                if step["type"] == "Resize":
                    step["scale"] = tuple(case["test_scale"])
    if case.get("test_cfg"):
        cfg.model.test_cfg = {
            k: tuple(v) if isinstance(v, list) else v for k, v in case["test_cfg"].items()
        }
    return cfg


def main():
    out_dir, cases = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    from mmseg.apis import inference_model, init_model
    from mmseg.registry import DATASETS
    from mmseg.utils import register_all_modules

    register_all_modules()
    out_dir.mkdir(parents=True, exist_ok=True)
    mpath = out_dir / "pipeline_manifest.json"
    manifest = json.loads(mpath.read_text()) if mpath.exists() else {}
    for name, case in cases.items():
        t = time.time()
        cfg = configure(case)
        model = init_model(cfg, checkpoint=None, device="cpu")
        keys = keys_of(model)
        model.load_state_dict(fill_state_dict(keys, case["seed"]))
        model.eval()
        seen = []

        def recording(data, training=False, seen=seen, preprocess=model.data_preprocessor.forward):
            seen.append(data["inputs"][0].clone())  # the uint8 image, before normalisation
            return preprocess(data, training)

        model.data_preprocessor.forward = recording
        result = inference_model(model, case["image"])
        logits = result.seg_logits.data
        labels = result.pred_sem_seg.data[0].numpy().astype(np.int16)
        top2 = logits.topk(2, dim=0).values.numpy()
        rng = np.random.default_rng(case["seed"])
        height, width = labels.shape
        at = np.stack(
            [rng.integers(0, height, SAMPLED_PIXELS), rng.integers(0, width, SAMPLED_PIXELS)], 1
        )
        np.savez_compressed(
            out_dir / f"{name}.npz",
            labels=labels,
            margin=(top2[0] - top2[1]).astype(np.float16),
            inputs=seen[0].numpy(),
            logits_at=at.astype(np.int32),
            logits=logits[:, at[:, 0], at[:, 1]].numpy().astype(np.float32),
        )
        dataset = DATASETS.get(cfg.test_dataloader.dataset.type).METAINFO
        meta = dict(
            cfg=cfg.pretty_text,
            seed=case["seed"],
            mmengine_version="0.10.7",
            dataset_meta=dict(
                classes=list(dataset["classes"]), palette=[list(c) for c in dataset["palette"]]
            ),
        )
        manifest[name] = dict(
            case,
            keys=keys,
            test_cfg=dict(cfg.model.test_cfg),
            test_pipeline=[dict(t_) for t_ in cfg.test_pipeline],
            meta=meta,
        )
        mpath.write_text(json.dumps(manifest, indent=1, default=str))
        print(name, labels.shape, tuple(seen[0].shape), f"{time.time() - t:.1f}s", flush=True)


if __name__ == "__main__":
    main()

"""Reference outputs from OpenMMLab's own code (mmsegmentation 1.2.2, mmcv-lite 2.1.0).

Run in a venv with: torch torchvision mmcv-lite==2.1.0 mmengine mmsegmentation==1.2.2 ftfy regex
(mmcv's compiled ops are stubbed by mmstub.py; the blocks used here are pure PyTorch).
usage: make_mm_fixtures.py OUT_DIR shared
Weights follow make_fixtures.fill_state_dict (the fill rule of shared/fixtures/danet_reference),
with one more leaf: `scale` (mmcv's Scale, DANet's gamma) -> 0.5 + 0.1 z.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import mmstub  # noqa: F401  (must precede mmseg imports)
from mmcv.cnn import ContextBlock, NonLocal2d
from mmcv.ops import CrissCrossAttention

CONFIGS = Path(__import__("mmseg").__file__).parent / ".mim" / "configs"


def fill_state_dict(keys_and_shapes, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in keys_and_shapes:
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0, dtype=torch.long)
            continue
        z = rng.standard_normal(shape).astype(np.float64)
        leaf = key.rsplit(".", 1)[-1]
        if leaf in ("gamma", "scale"):
            v = 0.5 + 0.1 * z
        elif leaf == "weight" and len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            v = z * np.sqrt(2.0 / fan_in)
        elif leaf == "weight":
            v = 1.0 + 0.1 * z
        elif leaf == "running_var":
            v = 1.0 + 0.1 * np.abs(z)
        else:
            v = 0.1 * z
        out[key] = torch.from_numpy(np.asarray(v, dtype=np.float32))
    return out


def keys_of(module):
    return [(k, list(v.shape)) for k, v in module.state_dict().items()]


def inp(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def block_case(module, x_shape, wseed, xseed):
    """Output and gradients of (output * w).sum() for a block in float32."""
    keys = keys_of(module)
    module.load_state_dict(fill_state_dict(keys, wseed))
    module.eval()
    x = torch.from_numpy(inp(x_shape, xseed)).requires_grad_(True)
    w = torch.from_numpy(inp(x_shape, xseed + 1000))
    y = module(x)
    arrays = {
        "input": x.detach().numpy(),
        "weight_for_loss": w.numpy(),
        "output": y.detach().numpy(),
    }
    try:
        (y * w).sum().backward()
    except RuntimeError as error:  # mmcv's concatenation mode divides a ReLU output in place
        print("no gradients:", str(error)[:100])
        return keys, arrays
    arrays["grad_input"] = x.grad.numpy()
    for k, p in module.named_parameters():
        arrays["grad." + k] = p.grad.numpy()
    return keys, arrays


def build_segmentor(config, num_classes=None):
    from mmengine import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(str(CONFIGS / config))
    bn = dict(type="BN", requires_grad=True)
    cfg.model.backbone.norm_cfg = bn
    cfg.model.decode_head.norm_cfg = bn
    if cfg.model.get("auxiliary_head"):
        cfg.model.auxiliary_head.norm_cfg = bn
    cfg.model.pretrained = None
    cfg.model.backbone.init_cfg = None
    return MODELS.build(cfg.model).eval(), cfg


def segmentor_case(config, x_shape, wseed, xseed):
    model, cfg = build_segmentor(config)
    keys = keys_of(model)
    model.load_state_dict(fill_state_dict(keys, wseed))
    x = torch.from_numpy(inp(x_shape, xseed))
    with torch.no_grad():
        feats = model.extract_feat(x)
        outs = model.decode_head(feats)
        main = outs[0] if isinstance(outs, (tuple, list)) else outs
        seg = F.interpolate(
            main,
            size=x.shape[-2:],
            mode="bilinear",
            align_corners=cfg.model.decode_head.align_corners,
        )
    arrays = {"input": x.numpy(), "seg_logits": seg.numpy()}
    names = ["pam_cam", "pam", "cam"] if isinstance(outs, (tuple, list)) else ["head"]
    for name, t in zip(names, outs if isinstance(outs, (tuple, list)) else [outs]):
        arrays["head." + name] = t.numpy()
    meta = {
        "config": config,
        "backbone": dict(cfg.model.backbone),
        "decode_head": {k: v for k, v in dict(cfg.model.decode_head).items() if k != "loss_decode"},
        "data_preprocessor": {
            k: v
            for k, v in dict(cfg.model.data_preprocessor).items()
            if k in ("mean", "std", "bgr_to_rgb")
        },
    }
    return keys, arrays, meta


PLANS = {
    "shared": dict(
        blocks_shape=(2, 64, 13, 17),
        wseed=3,
        xseed=4,
        danet=("danet/danet_r50-d8_4xb2-80k_cityscapes-512x1024.py", (1, 3, 65, 97)),
        ccnet=("ccnet/ccnet_r50-d8_4xb2-80k_cityscapes-512x1024.py", (1, 3, 65, 97)),
    ),
}


def main():
    out_dir, which = Path(sys.argv[1]), sys.argv[2]
    plan = PLANS[which]
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {}
    shape, wseed, xseed = plan["blocks_shape"], plan["wseed"], plan["xseed"]
    channels = shape[1]
    torch.manual_seed(0)
    blocks = {
        "criss_cross": (
            CrissCrossAttention(channels),
            dict(cls="mmcv.ops.CrissCrossAttention", in_channels=channels),
        )
    }
    for mode in ("embedded_gaussian", "dot_product", "gaussian", "concatenation"):
        for sub in (False, True):
            name = f"nonlocal_{mode}{'_subsample' if sub else ''}"
            blocks[name] = (
                NonLocal2d(channels, reduction=2, mode=mode, sub_sample=sub, use_scale=True),
                dict(
                    cls="mmcv.cnn.NonLocal2d",
                    in_channels=channels,
                    reduction=2,
                    mode=mode,
                    sub_sample=sub,
                    use_scale=True,
                ),
            )
    blocks["nonlocal_embedded_gaussian_noscale"] = (
        NonLocal2d(channels, reduction=2, mode="embedded_gaussian", use_scale=False),
        dict(
            cls="mmcv.cnn.NonLocal2d",
            in_channels=channels,
            reduction=2,
            mode="embedded_gaussian",
            sub_sample=False,
            use_scale=False,
        ),
    )
    for fusion in (("channel_add",), ("channel_mul",), ("channel_add", "channel_mul")):
        for pooling in ("att", "avg"):
            name = f"context_{pooling}_{'_'.join(f.split('_')[1] for f in fusion)}"
            blocks[name] = (
                ContextBlock(channels, ratio=1 / 4, pooling_type=pooling, fusion_types=fusion),
                dict(
                    cls="mmcv.cnn.ContextBlock",
                    in_channels=channels,
                    ratio=0.25,
                    pooling_type=pooling,
                    fusion_types=list(fusion),
                ),
            )
    for i, (name, (module, info)) in enumerate(sorted(blocks.items())):
        keys, arrays = block_case(module, shape, wseed + i, xseed)
        np.savez_compressed(out_dir / f"{name}.npz", **arrays)
        manifest[name] = dict(info, weights_seed=wseed + i, input_shape=list(shape), keys=keys)
        print(name, {k: tuple(v.shape) for k, v in arrays.items() if k in ("input", "output")})
    for name in ("danet", "ccnet"):
        config, x_shape = plan[name]
        keys, arrays, meta = segmentor_case(config, x_shape, wseed + 100, xseed + 100)
        np.savez_compressed(out_dir / f"mmseg_{name}.npz", **arrays)
        manifest[f"mmseg_{name}"] = dict(
            meta, weights_seed=wseed + 100, input_shape=list(x_shape), keys=keys
        )
        print(name, config, {k: tuple(v.shape) for k, v in arrays.items()})
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))


if __name__ == "__main__":
    main()

"""The meta every release's checkpoint would carry, written by mmseg's own config code.

Run in the venv of make_mm_fixtures.py (mmengine, mmsegmentation 1.2.2):
    python make_release_meta.py RELEASES_JSON OUT.json.xz
RELEASES_JSON: attnblocks/pretrained/mmseg_releases.json (the rows to cover).

For each release, mmengine's ``Config.fromfile`` reads its mmseg 1.2.2 config (inheritance
resolved by mmengine itself, not by this package's release-table generator) and writes:
- ``cfg``: ``Config.pretty_text`` of it, what mmengine's runner saves as ``meta["cfg"]``
  in an mmseg 1.x checkpoint (with ``dataset_meta``: the test dataset's ``METAINFO``);
- ``config``: ``Config.pretty_text`` of the same settings laid out as mmseg 0.x wrote
  them into its 2020-2021 releases' ``meta["config"]``: ``model`` (``train_cfg`` and
  ``test_cfg`` at the top level for files dated before December 2020, as mmseg < 0.9
  wrote them, else inside ``model``), ``img_norm_cfg``, a ``test_pipeline`` of
  ``LoadImageFromFile`` and ``MultiScaleFlipAug(img_scale=<the 1.x Resize scale>, flip=False,
  transforms=[Resize(keep_ratio=True), RandomFlip, Normalize, ImageToTensor, Collect])``,
  ``data = dict(test=dict(type=..., pipeline=...))``; 0.x put ``CLASSES`` and ``PALETTE``
  beside it in the meta.
The datasets' ``METAINFO`` (class names, palette) is stored once under ``_datasets``.
"""

import json
import lzma
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import mmstub  # noqa: F401  (must precede mmseg imports)
from mmengine import Config

CONFIGS = Path(__import__("mmseg").__file__).parent / ".mim" / "configs"
FOLDERS = {
    "danet": "danet",
    "ccnet": "ccnet",
    "nlnet": "nonlocal_net",
    "gcnet": "gcnet",
    "dnlnet": "dnlnet",
    "psanet": "psanet",
    "annnet": "ann",
    "isanet": "isanet",
    "ocrnet": "ocrnet",
    "emanet": "emanet",
}


def plain(value):
    """ConfigDicts and lists as plain dicts and lists (tuples kept)."""
    if hasattr(value, "items"):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    return value


def old_form(cfg, release):
    """The release's test settings in mmseg 0.x's config layout."""
    model = plain(cfg.model)
    model.pop("data_preprocessor", None)
    preprocessor = cfg.model.data_preprocessor
    norm = dict(
        mean=list(preprocessor.mean),
        std=list(preprocessor.std),
        to_rgb=bool(preprocessor.bgr_to_rgb),
    )
    resize = next(t for t in cfg.test_pipeline if t["type"] == "Resize")
    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(
            type="MultiScaleFlipAug",
            img_scale=tuple(resize["scale"]),
            flip=False,
            transforms=[
                dict(type="Resize", keep_ratio=True),
                dict(type="RandomFlip"),
                dict(type="Normalize", **norm),
                dict(type="ImageToTensor", keys=["img"]),
                dict(type="Collect", keys=["img"]),
            ],
        ),
    ]
    settings = {}
    date = int(release["weights"].rsplit("_", 2)[-2])  # ..._20200605_191324-c0dbfa5f.pth
    if date < 20201201:  # mmseg < 0.9: train_cfg / test_cfg beside the model
        settings["train_cfg"] = plain(model.pop("train_cfg", {}))
        settings["test_cfg"] = plain(model.pop("test_cfg"))
    dataset = cfg.test_dataloader.dataset
    settings = dict(
        norm_cfg=plain(cfg.get("norm_cfg", dict(type="SyncBN", requires_grad=True))),
        model=model,
        **settings,
        dataset_type=dataset.type,
        data_root=dataset.data_root,
        img_norm_cfg=norm,
        crop_size=tuple(cfg.crop_size),
        test_pipeline=pipeline,
        data=dict(
            samples_per_gpu=2,
            workers_per_gpu=2,
            test=dict(type=dataset.type, data_root=dataset.data_root, pipeline=pipeline),
        ),
        total_iters=release["iterations"],
        work_dir=f"./work_dirs/{release['run']}",
    )
    return Config(settings).pretty_text


def main():
    from mmseg.registry import DATASETS
    from mmseg.utils import register_all_modules

    register_all_modules()
    releases, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    metas, datasets = {}, {}
    for release in releases:
        release["run"] = release["weights"].rsplit("/", 2)[1]
        path = CONFIGS / FOLDERS[release["model"]] / f"{release['config']}.py"
        cfg = Config.fromfile(str(path))
        kind = cfg.test_dataloader.dataset.type
        info = DATASETS.get(kind).METAINFO
        datasets[kind] = dict(
            classes=list(info["classes"]), palette=[list(c) for c in info["palette"]]
        )
        metas[release["config"]] = dict(
            cfg=cfg.pretty_text, config=old_form(cfg, release), dataset=kind
        )
        print(release["config"], kind, flush=True)
    metas["_datasets"] = datasets
    out.write_bytes(lzma.compress(json.dumps(metas, indent=0).encode(), preset=9))
    print(out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main()

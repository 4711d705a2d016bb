"""The documentation's Python blocks run, each on its own; the generated pages are complete.

Every ```` ```python ```` block of ``docs/**/*.md``, of ``README.md`` and of the generated
model-zoo page runs alone, in a fresh namespace (no name from another block), in an empty
folder, as a reader would paste it. A block preceded by ``<!-- docs-test: skip (why) -->``
is not run and must say why. Blocks that need released weights run on checkpoints made
from the mmseg fixtures: downloads (``torch.hub.load_state_dict_from_url``) answer with
such a checkpoint for the release the URL names, and the images and release files a block
names are made in its folder. README.md is the short front page: at most 250 lines, and
every number it shows is one the site shows too.
"""

from __future__ import annotations

import configparser
import importlib.util
import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnblocks.pretrained import DATASETS, MMSEG_CHECKPOINTS, find_mmseg_checkpoint
from tests.compat.mmseg_reference import fixture_checkpoint, fixture_config, mmseg_state_dict

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
BLOCK = re.compile(r"(?:<!-- docs-test: skip\s*\(?([^>]*?)\)?\s*-->\n)?```python\n(.*?)```", re.S)
README_MAX_LINES = 250


def _load_hook():
    spec = importlib.util.spec_from_file_location(
        "generated_pages", DOCS / "hooks" / "generated_pages.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOK = _load_hook()


def python_blocks(text: str) -> list[tuple[str | None, str]]:
    """``(skip reason or None, code)`` of every Python block of a Markdown text."""
    return [(reason.strip() if reason else None, code) for reason, code in BLOCK.findall(text)]


def doc_files() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def collect() -> list:
    cases = []
    sources = [(path.relative_to(ROOT).as_posix(), path.read_text()) for path in doc_files()]
    sources.append(("README.md", README.read_text()))
    sources.append(("docs/model-zoo.md (generated)", HOOK.model_zoo("model-zoo.md")))
    for name, text in sources:
        for index, (reason, code) in enumerate(python_blocks(text)):
            marks = []
            if reason is not None:
                marks.append(pytest.mark.skip(reason=f"marked in the page: {reason}"))
            cases.append(pytest.param(name, code, id=f"{name}:{index}", marks=marks))
    return cases


# ---------------------------------------------------------------- fixture-made weights


def release_fixture(model: str, backbone: str) -> str | None:
    """The mmseg fixture whose keys (up to layer3's depth) a release of ``model`` on
    ``backbone`` has; None when no fixture has its backbone (HRNet-W18-Small, W48)."""
    if backbone.startswith("HRNet"):
        return "mmseg_ocrnet_hr18" if backbone == "HRNetV2p-W18" else None
    return {"annnet": "mmseg_ann", "ocrnet": "mmseg_ocrnet_r101"}.get(model, f"mmseg_{model}")


@cache
def release_checkpoint(config: str) -> dict:
    """A checkpoint of the release's model, depth and classes, with fixture weights.

    The fixture's own release (R-50, Cityscapes) gets the fixture's fill-rule weights and
    meta; other depths and class counts get seeded random weights on the fixture's keys.
    """
    entry = MMSEG_CHECKPOINTS[config]
    fixture = release_fixture(entry.model, entry.backbone)
    try:
        keys = fixture_config(fixture)["keys"]
    except KeyError:
        raise LookupError(
            f"a docs block loads {config!r}, a {entry.model} release on {entry.backbone}, and "
            "tests/data/mm_reference has no fixture to make its weights from: load a release "
            "of a fixture's backbone, add the fixture or mark the block "
            "<!-- docs-test: skip (why) -->"
        ) from None
    fixture_depth = len(
        {key.split(".")[2] for key, _ in keys if key.startswith("backbone.layer3.")}
    )
    # layer3 blocks: R-50 6, R-101 23; an HRNet fixture has the release's own layout
    depth = {"R-50-D8": 6, "R-101-D8": 23}.get(entry.backbone, fixture_depth)
    classes = len(DATASETS[entry.dataset].classes)
    fixture_classes = next(shape[0] for key, shape in keys if key.endswith("conv_seg.weight"))
    if depth == fixture_depth and classes == fixture_classes:
        return fixture_checkpoint(fixture)
    state = mmseg_state_dict(fixture, depth, classes)
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = value.abs() + 0.5  # a variance is positive
    return {"meta": {}, "state_dict": state}


def fake_download(url: str, *args, **kwargs) -> dict:
    entry = find_mmseg_checkpoint(url)
    if entry is None:
        raise LookupError(f"the docs test only serves released mmseg checkpoints, not {url}")
    return release_checkpoint(entry.config)


def prepare_folder(folder: Path, code: str) -> None:
    """The files a block names: images and releases.

    The images are a thin wide strip: Cityscapes' and ADE20K's test resizes (fit into
    2048 x 1024 and 2048 x 512) enlarge it only 1.28x, so a model sees 10 x 2048 pixels.
    """
    pixels = np.random.default_rng(0).integers(0, 256, (8, 1600, 3), dtype=np.uint8)
    for name in set(re.findall(r'"([\w./-]+\.(?:png|jpg))"', code)):
        Image.fromarray(pixels).save(folder / name)
    for name in set(re.findall(r'"([\w.-]+\.pth)"', code)):
        entry = find_mmseg_checkpoint(name)
        if entry is not None:
            torch.save(release_checkpoint(entry.config), folder / name)


def run_block(page: str, code: str) -> None:
    """Run one block as a reader would: in a namespace of its own."""
    torch.manual_seed(0)
    exec(compile(code, f"{page} python block", "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize(("page", "code"), collect())
def test_python_block_runs_alone(page, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    prepare_folder(tmp_path, code)
    run_block(page, code)


def test_a_block_using_an_earlier_blocks_name_fails():
    """Each block's namespace is its own: the check above can fail."""
    run_block("first", "import torch\nx = torch.ones(1)")
    with pytest.raises(NameError, match="'x' is not defined"):
        run_block("second", "print(x)")


# ---------------------------------------------------------------- the pages themselves


def test_every_skipped_block_says_why():
    texts = [p.read_text() for p in (*doc_files(), README)]
    for text in texts:
        for reason, _ in python_blocks(text):
            assert reason is None or len(reason) > 10, reason


def test_the_zoo_lists_every_release_once_marked_by_what_loads():
    from attnblocks.models import MMSEG_MODELS

    page = HOOK.model_zoo("model-zoo.md")
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert len(rows) == len(MMSEG_CHECKPOINTS) == 152
    for config, entry in MMSEG_CHECKPOINTS.items():
        (row,) = [r for r in rows if r.startswith(f"| `{config}` |")]
        assert entry.url in row and f"`{entry.sha256_prefix}`" in row and f"{entry.miou:.2f}" in row
        loads = MMSEG_MODELS.get(entry.model)
        assert row.endswith(f"`{loads.__name__}.from_mmseg` |" if loads else "not yet |"), row


def test_the_api_reference_documents_every_public_name_once():
    import importlib

    pages = HOOK.api_pages()
    documented = [
        line[4:] for text in pages.values() for line in text.splitlines() if line.startswith("::: ")
    ]
    for module_name in HOOK.API_MODULES.values():
        module = importlib.import_module(module_name)
        for name in HOOK.public_names(module):
            page = pages[module_name.removeprefix("attnblocks.")]
            assert f"{module_name}.{name}" in page, (module_name, name)  # an entry or a link
    objects = [d for d in documented if d not in HOOK.API_MODULES.values()]
    assert len(objects) == len(set(objects))


def test_a_missing_public_name_fails_the_build(monkeypatch):
    import attnblocks.losses

    monkeypatch.setattr(attnblocks.losses, "__all__", ["DANetLoss", "NoSuchLoss"], raising=False)
    with pytest.raises(HOOK.PluginError, match="NoSuchLoss"):
        HOOK.api_pages()
    monkeypatch.setattr(attnblocks.losses, "__all__", ["DANetLoss"], raising=False)
    with pytest.raises(HOOK.PluginError, match="SegmentationCrossEntropy is public"):
        HOOK.api_pages()


def test_the_docs_address_is_the_same_in_mkdocs_yml_and_setup_cfg():
    site_url = re.search(r"^site_url:\s*(\S+)", (ROOT / "mkdocs.yml").read_text(), re.M)[1]
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    urls = dict(
        line.split(" = ", 1) for line in config["metadata"]["project_urls"].strip().splitlines()
    )
    assert urls["Documentation"] == config["metadata"]["url"] == site_url
    for page in ("model-zoo", "changelog"):
        assert any(u == f"{site_url}{page}/" for u in urls.values()), page


def test_every_nav_page_exists_or_is_generated():
    nav = re.findall(r":\s*(\S+\.md)$|^\s+- (\S+\.md)$", (ROOT / "mkdocs.yml").read_text(), re.M)
    generated = {f"api/{page}.md" for page in HOOK.API_MODULES}
    for page in {a or b for a, b in nav}:
        assert (DOCS / page).is_file() or page in generated, page


def test_the_readme_is_short_and_its_numbers_are_on_the_site():
    readme = README.read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    prose = re.sub(r"```.*?```", "", readme, flags=re.S)
    prose = re.sub(r"`[^`]*`|\]\([^)]*\)|https?://\S+", "", prose)  # code, link targets
    numbers = set(re.findall(r"(?<![\w.-])\d+(?:\.\d+)?(?![\w-])", prose))
    site = " ".join(p.read_text() for p in doc_files()) + HOOK.model_zoo("model-zoo.md")
    missing = [
        n for n in sorted(numbers) if not re.search(rf"(?<![\d.]){re.escape(n)}(?![\d])", site)
    ]
    assert not missing, f"numbers of README.md that no docs page shows: {missing}"


def test_the_readme_has_what_ci_runs():
    """.ci/run runs the first Python block of "## Quick start", the install and the tests."""
    readme = README.read_text()
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    assert "```python\n" in section, "the Quick start section has a Python block"
    assert 'pip install -e ".[test]"' in readme and re.search(r"^pytest\b", readme, re.M)

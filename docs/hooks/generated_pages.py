"""mkdocs hook: the pages that are written from the package and the repository at build time.

- The API reference (``api/<module>.md``): one page per public module, an entry for every
  name of its ``__all__``, each documented once (on the first page of ``API_MODULES``
  that exports it; the others link there). A name in ``__all__`` that does not exist, or a
  public class or function of the package that a module holds but does not list in
  ``__all__``, fails the build.
- The model zoo (``model-zoo.md``, at its marker): one table per model from
  ``attnblocks.pretrained.MMSEG_CHECKPOINTS``, every release once, marked by whether
  ``attnblocks.models.MMSEG_MODELS`` has a class that loads it today.
- The benchmark results (``benchmarks.md``, at its marker): every table in
  ``benchmarks/results/`` with its machine line and its plots, which are copied into the
  site under the same paths.

Nothing here is typed twice: a new release, module name or result file shows up by itself.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

try:
    from mkdocs.exceptions import PluginError
except ImportError:  # the page generators also run without mkdocs, in tests/test_docs.py
    PluginError = RuntimeError  # type: ignore[misc,assignment]

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the checkout's attnblocks, as mkdocstrings reads it

# page -> module, in the order that decides where a re-exported name is documented
API_MODULES = {
    "layers": "attnblocks.layers",
    "functional": "attnblocks.functional",
    "models": "attnblocks.models",
    "compat": "attnblocks.compat",
    "pretrained": "attnblocks.pretrained",
    "inference": "attnblocks.inference",
    "losses": "attnblocks.losses",
    "metrics": "attnblocks.metrics",
    "attnblocks": "attnblocks",
}
ZOO_MARKER = "<!-- generated: model zoo -->"
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|obj|exc|const):`(~?)([^`]+)`")
BENCHMARKS_MARKER = "<!-- generated: benchmark results -->"
RESULTS = ROOT / "benchmarks" / "results"


# ---------------------------------------------------------------- API reference


def _kind(obj: object) -> str:
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "constant"


def _summary(obj: object) -> str:
    """The first paragraph of an object's own docstring (constants: their value's type)."""
    if inspect.isclass(obj) or callable(obj):
        doc = inspect.getdoc(obj) or ""
        line = doc.strip().split("\n\n")[0].replace("\n", " ")
        line = _ROLE.sub(lambda m: f"`{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}`", line)
        return line.replace("|", "\\|")
    return f"`{type(obj).__name__}`"


def public_names(module: Any) -> list[str]:
    """The module's ``__all__``; without one, the classes and functions it defines, unprefixed."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module.__name__
    ]


def _unlisted_public_names(module: Any) -> list[str]:
    """Public classes and functions the module (or a submodule of it) defines but does not list."""
    listed = set(public_names(module))
    unlisted = []
    for name, obj in vars(module).items():
        if name.startswith("_") or name in listed or inspect.ismodule(obj):
            continue
        # defined by this module or by one of its own submodules (imported helpers are not)
        defined_in = getattr(obj, "__module__", None) or ""
        own = defined_in == module.__name__ or defined_in.startswith(module.__name__ + ".")
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and own:
            unlisted.append(name)
    return unlisted


def api_pages() -> dict[str, str]:
    """Markdown of every API page, by page name."""
    owner: dict[tuple[str, int], str] = {}  # (name, id(object)) -> module that documents it
    problems = []
    modules = {}
    for page, module_name in API_MODULES.items():
        module = importlib.import_module(module_name)
        modules[page] = module
        names = public_names(module)
        missing = [name for name in names if not hasattr(module, name)]
        problems += [
            f"{module_name}.__all__ names {name!r}, which does not exist" for name in missing
        ]
        problems += [
            f"{module_name}.{name} is public (no leading underscore) but not in __all__: "
            "list it there, so the API reference documents it, or make it private"
            for name in _unlisted_public_names(module)
        ]
        for name in names:
            if hasattr(module, name):
                owner.setdefault((name, id(getattr(module, name))), module_name)
    if problems:
        raise PluginError("API reference:\n  " + "\n  ".join(problems))

    pages = {}
    for page, module in modules.items():
        module_name = module.__name__
        own, elsewhere = [], []
        for name in public_names(module):
            home = owner[(name, id(getattr(module, name)))]
            (own if home == module_name else elsewhere).append((name, home))
        lines = [
            f"# `{module_name}`",
            "",
            f"::: {module_name}",
            "    options:",
            "      members: false",
            "      show_root_heading: false",
            "      show_root_toc_entry: false",
            "",
        ]
        if own:
            lines += ["| name | kind | summary |", "|---|---|---|"]
            lines += [
                f"| [`{name}`][{module_name}.{name}] | {_kind(getattr(module, name))} "
                f"| {_summary(getattr(module, name))} |"
                for name, _ in own
            ]
            lines.append("")
        if elsewhere:
            lines += [
                f"Also exported by `{module_name}`, documented where they are defined:",
                "",
            ]
            lines += [f"- [`{module_name}.{name}`][{home}.{name}]" for name, home in elsewhere]
            lines.append("")
        for name, _ in own:
            lines += [f"::: {module_name}.{name}", ""]
        pages[page] = "\n".join(lines)
    return pages


# ---------------------------------------------------------------- model zoo

# model -> (family heading, model page, class name when no class loads it yet)
ZOO_FAMILIES = {
    "danet": ("DANet", "models/danet.md", "DANet"),
    "ccnet": ("CCNet", "models/ccnet.md", "CCNet"),
    "nlnet": ("Non-local family", "models/nonlocal-family.md", "NLNet"),
    "gcnet": ("Non-local family", "models/nonlocal-family.md", "GCNet"),
    "dnlnet": ("Non-local family", "models/nonlocal-family.md", "DNLNet"),
    "psanet": ("Non-local family", "models/nonlocal-family.md", "PSANet"),
    "annnet": ("Self-attention family", "models/self-attention-family.md", "ANNNet"),
    "isanet": ("Self-attention family", "models/self-attention-family.md", "ISANet"),
    "ocrnet": ("OCRNet", "models/ocrnet.md", "OCRNet"),
    "emanet": ("Self-attention family", "models/self-attention-family.md", "EMANet"),
}
#: the examples load a release with one of these backbones when the model has one: the
#: backbones of tests/data/mm_reference's fixtures, from which tests/test_docs.py makes the
#: weights that let every example of the page run in CI
EXAMPLE_BACKBONES = ("R-50-D8", "HRNetV2p-W18")

DATASET_NAMES = {"cityscapes": "Cityscapes", "ade20k": "ADE20K", "voc": "VOC 2012 + aug"}


def _iterations(count: int) -> str:
    return f"{count // 1000}k" if count % 1000 == 0 else str(count)


def _relative(target: str, page_uri: str) -> str:
    """A link from the page at ``page_uri`` to the docs file ``target``."""
    depth = page_uri.count("/")
    return "../" * depth + target


def _example_release(entries: list) -> Any:
    """The release a model's example loads: the first with an :data:`EXAMPLE_BACKBONES`."""
    return next((e for e in entries if e.backbone in EXAMPLE_BACKBONES), entries[0])


def model_zoo(page_uri: str) -> str:
    """The zoo's tables: a section per family, a table per model, every release once."""
    from attnblocks.models import MMSEG_MODELS
    from attnblocks.pretrained import MMSEG_CHECKPOINTS

    by_model: dict[str, list] = defaultdict(list)
    for entry in MMSEG_CHECKPOINTS.values():
        by_model[entry.model].append(entry)
    unknown = sorted(set(by_model) - set(ZOO_FAMILIES))
    if unknown:
        raise PluginError(f"model zoo: releases of models with no family in the hook: {unknown}")
    loadable = sorted(m for m in by_model if m in MMSEG_MODELS)
    lines = [
        f"**{len(MMSEG_CHECKPOINTS)} releases of {len(by_model)} models**; "
        f"{sum(len(by_model[m]) for m in loadable)} of them, the releases of "
        f"{', '.join(MMSEG_MODELS[m].__name__ for m in loadable)}, load in this version.",
        "",
    ]
    families: dict[str, list[str]] = defaultdict(list)
    for model in ZOO_FAMILIES:  # the family order of the table above
        if model in by_model:
            families[ZOO_FAMILIES[model][0]].append(model)
    written = 0
    for family, models in families.items():
        lines += [f"## {family}", ""]
        for model in models:
            entries = by_model[model]
            _, model_page, planned = ZOO_FAMILIES[model]
            cls = MMSEG_MODELS.get(model)
            name = cls.__name__ if cls is not None else planned
            if len(models) > 1:
                lines += [f"### {name}", ""]
            if cls is not None:
                lines += [
                    f"Loads today: `attnblocks.models.{name}.from_mmseg(config)` with a config "
                    f"name of the table (download, hash check, strict load), or "
                    f"`attnblocks.models.from_mmseg(...)`. See [{name}]"
                    f"({_relative(model_page, page_uri)}) and "
                    f"[Pretrained weights]({_relative('pretrained.md', page_uri)}).",
                    "",
                    "```python",
                    f"from attnblocks.models import {name}",
                    "",
                    f'model = {name}.from_mmseg("{_example_release(entries).config}")',
                    "```",
                    "",
                ]
            else:
                lines += [
                    f'!!! note "Not loadable in this version"\n'
                    f"    No class of this version loads these releases yet "
                    f"(`attnblocks.models.MMSEG_MODELS` has no `{model}`); they are listed "
                    f"so that the zoo is complete. See [the model page]"
                    f"({_relative(model_page, page_uri)}).",
                    "",
                ]
            lines += [
                '<div class="zoo-table" markdown>',
                "",
                "| config | dataset | backbone | crop | iterations | mIoU | mIoU (ms+flip) "
                "| download | SHA-256 | loads |",
                "|---|---|---|---|---:|---:|---:|---|---|---|",
            ]
            for e in entries:
                ms = "-" if e.miou_ms_flip is None else f"{e.miou_ms_flip:.2f}"
                loads = f"`{name}.from_mmseg`" if cls is not None else "not yet"
                lines.append(
                    f"| `{e.config}` | {DATASET_NAMES.get(e.dataset, e.dataset)} | {e.backbone} "
                    f"| {e.crop[0]}x{e.crop[1]} | {_iterations(e.iterations)} | {e.miou:.2f} "
                    f"| {ms} | [model]({e.url}) | `{e.sha256_prefix}` | {loads} |"
                )
            written += len(entries)
            lines += ["", "</div>", ""]
    if written != len(MMSEG_CHECKPOINTS):
        raise PluginError(f"model zoo: wrote {written} rows for {len(MMSEG_CHECKPOINTS)} releases")
    return "\n".join(lines)


# ---------------------------------------------------------------- benchmark results


def benchmark_results() -> str:
    """Every committed result table, its machine line first, its plots after it."""
    lines = []
    tables = sorted(RESULTS.glob("*.md"))
    plots_of: dict[str, list[Path]] = defaultdict(list)
    for plot in sorted(RESULTS.glob("*.png")):
        # a plot belongs to the longest table name it starts with ("x-forced-..." is not "x")
        stems = [t.stem for t in tables if plot.stem.startswith(t.stem)]
        plots_of[max(stems, key=len) if stems else ""].append(plot)
    if plots_of[""]:
        raise PluginError(f"benchmark plots without a table: {[p.name for p in plots_of['']]}")
    for table in tables:
        machine, _, rest = table.read_text().partition("\n")
        plots = plots_of[table.stem]
        lines += [
            f"### `{table.name}`",
            "",
            f"**Machine and setting:** {machine.removeprefix('Device: ').strip()}",
            "",
            f'??? note "The table ({len(rest.strip().splitlines())} lines; JSON beside it: '
            f'`{table.stem}.json`)"',
            "",
        ]
        lines += ["    " + line if line else "" for line in rest.strip().splitlines()]
        lines.append("")
        for plot in plots:
            caption = plot.stem.removeprefix(table.stem + "-").replace("-", " ")
            lines += [f"![{caption}](benchmarks/results/{plot.name})", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- mkdocs events


def on_files(files: Any, config: Any, **kwargs: Any) -> Any:
    from mkdocs.structure.files import File

    for page, text in api_pages().items():
        files.append(File.generated(config, f"api/{page}.md", content=text))
    for plot in sorted(RESULTS.glob("*.png")):
        files.append(
            File.generated(config, f"benchmarks/results/{plot.name}", abs_src_path=str(plot))
        )
    return files


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    uri = page.file.src_uri
    if uri == "model-zoo.md":
        if ZOO_MARKER not in markdown:
            raise PluginError(f"model-zoo.md lost its marker {ZOO_MARKER}")
        markdown = markdown.replace(ZOO_MARKER, model_zoo(uri))
    if uri == "benchmarks.md":
        if BENCHMARKS_MARKER not in markdown:
            raise PluginError(f"benchmarks.md lost its marker {BENCHMARKS_MARKER}")
        markdown = markdown.replace(BENCHMARKS_MARKER, benchmark_results())
    return markdown

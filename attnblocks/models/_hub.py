"""huggingface_hub's ``PyTorchModelHubMixin`` when installed, else a stand-in saying how to get it.

The mixin gives ``save_pretrained(dir)`` (config.json of the constructor's arguments,
safetensors weights, a model card: :func:`model_card` writes ours), ``from_pretrained(dir
or hub id)`` and ``push_to_hub``. It comes with the optional ``hub`` extra: without it,
models build, train and load other checkpoints as usual, and only these methods raise an
ImportError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_MISSING = (
    "saving and loading models the Hub way needs huggingface_hub and safetensors: "
    "pip install huggingface_hub safetensors (the attnblocks[hub] extra)"
)

try:
    from huggingface_hub import PyTorchModelHubMixin as HubMixin

    HUB_AVAILABLE = True
except ImportError:
    HUB_AVAILABLE = False

    class HubMixin:  # type: ignore[no-redef]
        """Stand-in for ``PyTorchModelHubMixin``: its methods raise an ImportError."""

        def __init_subclass__(cls, **hub_metadata: Any) -> None:
            super().__init_subclass__()  # library_name, tags...: only the real mixin uses them

        def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
            """Unavailable: huggingface_hub is not installed."""
            raise ImportError(_MISSING)

        @classmethod
        def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
            """Unavailable: huggingface_hub is not installed."""
            raise ImportError(_MISSING)

        def push_to_hub(self, *args: Any, **kwargs: Any) -> None:
            """Unavailable: huggingface_hub is not installed."""
            raise ImportError(_MISSING)


#: the config.json key that records which class saved the folder
MODEL_CLASS_KEY = "model_class"
#: the config.json key of where the weights came from (a release URL, a file...), if known
WEIGHTS_SOURCE_KEY = "weights_source"
_MAX_LISTED_CLASSES = 40  # a card lists up to this many class names, then counts the rest


def _pair(value: Any) -> str:
    return "-" if value is None else " x ".join(str(v) for v in value)


def model_card(model: Any, config: Mapping[str, Any], card_data: Any = None) -> str:
    """The README.md that ``save_pretrained`` writes: what the model is and how to use it.

    Args:
        model: the :class:`~attnblocks.models.SegmentationModel` being saved.
        config: the ``config.json`` contents being written beside it.
        card_data: huggingface_hub's ``ModelCardData`` of the class (library name, tags,
            pipeline tag) for the card's metadata header; None: no header.

    Returns:
        Markdown, with a YAML metadata header when ``card_data`` is given.
    """
    name = type(model).__name__
    pretrained = model.pretrained_config
    summary = (type(model).__doc__ or name).strip().splitlines()[0]
    summary = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", summary)  # Sphinx roles as plain code
    names = list(pretrained.class_names)
    listed = ", ".join(names[:_MAX_LISTED_CLASSES])
    if len(names) > _MAX_LISTED_CLASSES:
        listed += f", ... ({len(names) - _MAX_LISTED_CLASSES} more)"
    dataset = f" ({pretrained.dataset})" if pretrained.dataset else ""
    source = config.get(WEIGHTS_SOURCE_KEY) or "not recorded"
    multi_grid = config.get("multi_grid")
    header = f"---\n{card_data.to_yaml()}\n---\n\n" if card_data is not None else ""
    return (
        f"{header}# {name} ({model.backbone_name}, {len(names)} classes{dataset})\n\n"
        f"{summary}\n\n"
        "| | |\n|---|---|\n"
        f"| architecture | `attnblocks.models.{name}` |\n"
        f"| backbone | timm `{model.backbone_name}`, output stride {model.output_stride}"
        f"{f', multi-grid {tuple(multi_grid)}' if multi_grid else ''} |\n"
        f"| classes | {len(names)}{dataset}: {listed} |\n"
        f"| source checkpoint | {source} |\n"
        f"| input | RGB, 0-255 minus mean {pretrained.mean}, divided by std {pretrained.std} |\n"
        f"| test resize (long, short) | {_pair(pretrained.image_scale)} |\n"
        f"| sliding window, stride | {_pair(pretrained.crop_size)}, {_pair(pretrained.stride)} |\n"
        f"| attnblocks version | {config.get('attnblocks_version', '-')} |\n\n"
        "## Use\n\n"
        "```python\n"
        f"from attnblocks.models import {name}\n\n"
        f'model = {name}.from_pretrained("FOLDER_OR_HUB_ID")\n'
        'labels = model.predict_image("image.png")  # (H, W) class indices\n'
        "names = model.pretrained_config.class_names\n"
        "```\n"
    )

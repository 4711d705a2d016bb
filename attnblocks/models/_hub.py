"""huggingface_hub's ``PyTorchModelHubMixin`` when installed, else a stand-in saying how to get it.

The mixin gives ``save_pretrained(dir)`` (config.json of the constructor's arguments,
safetensors weights, a model card), ``from_pretrained(dir or hub id)`` and
``push_to_hub``. It comes with the optional ``hub`` extra: without it, models build,
train and load other checkpoints as usual, and only these methods raise an ImportError.
"""

from __future__ import annotations

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

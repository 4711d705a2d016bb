"""DANet's attention math as plain functions, with selectable backends."""

from ._backends import CHANNEL_BACKENDS, POSITION_BACKENDS
from .channel import CHANNEL_MODES, channel_attention, channel_attention_weights
from .position import position_attention, position_attention_weights

__all__ = [
    "CHANNEL_BACKENDS",
    "CHANNEL_MODES",
    "POSITION_BACKENDS",
    "channel_attention",
    "channel_attention_weights",
    "position_attention",
    "position_attention_weights",
]

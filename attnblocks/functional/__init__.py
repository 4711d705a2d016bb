"""The attention math of the blocks as plain functions, with selectable backends."""

from ._backends import (
    BACKEND_ENV_VAR,
    CHANNEL_BACKENDS,
    POSITION_BACKENDS,
    attention_backend,
    get_attention_backend,
    last_attention_backend,
    set_attention_backend,
)
from ._chunked import DEFAULT_CHUNK_MEMORY, chunk_size_for_memory
from ._precision import low_precision_is_faster
from .channel import CHANNEL_MODES, channel_attention, channel_attention_weights
from .criss_cross import criss_cross_attention, criss_cross_attention_weights
from .position import (
    BMM_MAX_MATRIX_BYTES,
    position_attention,
    position_attention_weights,
    select_position_backend,
)
from .psa_mask import PSA_TYPES, psa_mask

__all__ = [
    "BACKEND_ENV_VAR",
    "BMM_MAX_MATRIX_BYTES",
    "CHANNEL_BACKENDS",
    "CHANNEL_MODES",
    "DEFAULT_CHUNK_MEMORY",
    "POSITION_BACKENDS",
    "PSA_TYPES",
    "attention_backend",
    "channel_attention",
    "channel_attention_weights",
    "chunk_size_for_memory",
    "criss_cross_attention",
    "criss_cross_attention_weights",
    "get_attention_backend",
    "last_attention_backend",
    "low_precision_is_faster",
    "position_attention",
    "position_attention_weights",
    "psa_mask",
    "select_position_backend",
    "set_attention_backend",
]

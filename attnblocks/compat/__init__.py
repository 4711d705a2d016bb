"""Weights from other implementations: one key-mapping mechanism, one table per source.

A source of weights is a :class:`KeyMap` (``_keymap.py``): an ordered table of
:class:`Rename` rules from the source's key prefixes to this package's, the prefixes
it drops and the wrapper prefixes it strips. ``KeyMap.convert`` renames and names the
keys no rule covers; ``KeyMap.load_into`` then loads strictly through
:func:`load_state_dict_strictly`, which lists every missing, unexpected or misshapen
key in one ``ValueError``. Sources so far:

- ``original.py``: the authors' DANet (``ORIGINAL_DANET``, ``ORIGINAL_DANET_HEAD``).
- ``mmcv.py``: mmcv's ``CrissCrossAttention``, ``NonLocal2d`` and ``ContextBlock``
  (:func:`load_mmcv_state_dict` picks the table that fits the module).
- ``mmseg.py``: mmsegmentation's segmentors on ResNetV1c (``MMSEG_DANET``,
  ``MMSEG_CCNET``), with the helpers that read its checkpoints and infer backbone depth
  and classes.
- ``mmseg_self_attention.py``: mmseg's ``SelfAttentionBlock`` and the heads built on it
  (``MMSEG_ANNNET``, ``MMSEG_ISANET``, ``MMSEG_EMANET``).
- ``mmseg_ocr.py``: mmsegmentation's OCRNet cascade on ResNetV1c or HRNetV2
  (``MMSEG_OCRNET``).
- ``mmseg_nonlocal.py``: its non-local family (``MMSEG_NLNET``, ``MMSEG_GCNET``,
  ``MMSEG_DNLNET``, ``MMSEG_PSANET``) and the decode head's settings of a meta config.

Adding a source is adding a table, in a file named after the source:

1. Write its rules as data, relative to the part they describe, e.g. for a head
   ``(Rename("pam.query_project.", "attention.pam.query_conv."), ...)``; give a rule a
   ``convert`` where the tensor layout differs too (``scalar_to_vector`` turns mmcv's
   0-d ``Scale.scale`` into a ``gamma`` of shape ``[1]``).
2. Compose the whole model's :class:`KeyMap` from parts with :func:`prefixed`; an mmseg
   segmentor on ResNetV1c is one line, ``mmseg_segmentor_key_map("CCNet", rules)``.
3. Load with ``key_map.load_into(model, checkpoint)`` (models point to their mmseg
   table with the class attribute ``mmseg_key_map``, which ``from_mmseg`` uses), and
   test it on the source's reference fixture: outputs equal, and a removed, added or
   reshaped key named in the error.
"""

from ._checkpoint import read_checkpoint
from ._keymap import (
    KeyMap,
    Rename,
    load_state_dict_strictly,
    prefixed,
    scalar_to_vector,
    unwrap_state_dict,
)
from .mmcv import (
    MMCV_CONTEXT_BLOCK,
    MMCV_CRISS_CROSS,
    MMCV_CRISS_CROSS_RULES,
    MMCV_NON_LOCAL,
    load_mmcv_state_dict,
    mmcv_key_map,
)
from .mmseg import (
    MMSEG_CCHEAD_RULES,
    MMSEG_CCNET,
    MMSEG_DAHEAD_RULES,
    MMSEG_DANET,
    MMSEG_RESNET_V1C_RULES,
    conv_module_rules,
    convert_mmseg_danet_state_dict,
    mmseg_backbone_name,
    mmseg_num_classes,
    mmseg_segmentor_key_map,
    read_mmseg_checkpoint,
)
from .mmseg_config import mmseg_decode_head_settings
from .mmseg_nonlocal import (
    MMSEG_DNLHEAD_RULES,
    MMSEG_DNLNET,
    MMSEG_GCHEAD_RULES,
    MMSEG_GCNET,
    MMSEG_NLHEAD_RULES,
    MMSEG_NLNET,
    MMSEG_PSAHEAD_RULES,
    MMSEG_PSANET,
    fcn_attention_head_rules,
    mmseg_context_options,
    mmseg_non_local_options,
    mmseg_psa_options,
)
from .mmseg_ocr import (
    MMSEG_HRNET_RULES,
    MMSEG_OBJECT_ATTENTION_RULES,
    MMSEG_OCR_CASCADE_RULES,
    MMSEG_OCRNET,
)
from .mmseg_self_attention import (
    MMSEG_ANNHEAD_RULES,
    MMSEG_ANNNET,
    MMSEG_EMAHEAD_RULES,
    MMSEG_EMANET,
    MMSEG_ISAHEAD_RULES,
    MMSEG_ISANET,
    check_mmseg_shared_key_query,
    mmseg_projection_rules,
    mmseg_self_attention_rules,
)
from .original import (
    ORIGINAL_DANET,
    ORIGINAL_DANET_HEAD,
    ORIGINAL_DANET_HEAD_RULES,
    convert_original_head_state_dict,
    convert_original_state_dict,
    load_original_state_dict,
)

__all__ = [
    "MMCV_CONTEXT_BLOCK",
    "MMCV_CRISS_CROSS",
    "MMCV_CRISS_CROSS_RULES",
    "MMCV_NON_LOCAL",
    "MMSEG_ANNHEAD_RULES",
    "MMSEG_ANNNET",
    "MMSEG_CCHEAD_RULES",
    "MMSEG_CCNET",
    "MMSEG_DAHEAD_RULES",
    "MMSEG_DANET",
    "MMSEG_DNLHEAD_RULES",
    "MMSEG_DNLNET",
    "MMSEG_EMAHEAD_RULES",
    "MMSEG_EMANET",
    "MMSEG_GCHEAD_RULES",
    "MMSEG_GCNET",
    "MMSEG_HRNET_RULES",
    "MMSEG_ISAHEAD_RULES",
    "MMSEG_ISANET",
    "MMSEG_NLHEAD_RULES",
    "MMSEG_NLNET",
    "MMSEG_OBJECT_ATTENTION_RULES",
    "MMSEG_OCRNET",
    "MMSEG_OCR_CASCADE_RULES",
    "MMSEG_PSAHEAD_RULES",
    "MMSEG_PSANET",
    "MMSEG_RESNET_V1C_RULES",
    "ORIGINAL_DANET",
    "ORIGINAL_DANET_HEAD",
    "ORIGINAL_DANET_HEAD_RULES",
    "KeyMap",
    "Rename",
    "check_mmseg_shared_key_query",
    "conv_module_rules",
    "convert_mmseg_danet_state_dict",
    "convert_original_head_state_dict",
    "convert_original_state_dict",
    "fcn_attention_head_rules",
    "load_mmcv_state_dict",
    "load_original_state_dict",
    "load_state_dict_strictly",
    "mmcv_key_map",
    "mmseg_backbone_name",
    "mmseg_context_options",
    "mmseg_decode_head_settings",
    "mmseg_non_local_options",
    "mmseg_num_classes",
    "mmseg_projection_rules",
    "mmseg_psa_options",
    "mmseg_segmentor_key_map",
    "mmseg_self_attention_rules",
    "prefixed",
    "read_checkpoint",
    "read_mmseg_checkpoint",
    "scalar_to_vector",
    "unwrap_state_dict",
]

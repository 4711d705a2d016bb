"""The scaffold the package's segmentation models share: timm backbone -> head -> upsample.

An architecture's file builds only its head (``self.head``, fed the backbone's last
feature map, or the list of the levels it declares in ``feature_levels``, as mmseg's
``in_index``; it returns logits, or a NamedTuple of logit maps with the prediction
first) and points to its compat table for mmseg checkpoints (``mmseg_key_map``, with
``mmseg_model``, ``mmseg_head_types`` and ``mmseg_head_keys``, which register the class
for :func:`attnblocks.models.from_mmseg`). :class:`SegmentationModel`
builds the dilated backbone, upsamples every logit map to the input size, predicts
labels for tensors and for images (with the preprocessing of its
:class:`~attnblocks.pretrained.PretrainedConfig`), loads mmsegmentation checkpoints,
and saves and loads itself with huggingface_hub's ``PyTorchModelHubMixin``
(``save_pretrained`` / ``from_pretrained``), as segmentation_models.pytorch's
``SegmentationModel`` does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_float_tensor, check_positive_int
from ..compat import (
    KeyMap,
    load_state_dict_strictly,
    mmseg_backbone_name,
    mmseg_num_classes,
    read_mmseg_checkpoint,
)
from ..inference import Size2, _check_scales, predict_views, tta_size
from ..pretrained import (
    MMSEG_CHECKPOINTS,
    ImageLike,
    MMSegCheckpoint,
    PretrainedConfig,
    PretrainedConfigLike,
    find_mmseg_checkpoint,
    load_mmseg_checkpoint,
    mmseg_align_corners,
    mmseg_pretrained_config,
    read_rgb,
    resize_uint8,
)
from ._hub import HubMixin
from .backbone import OutputStride, create_backbone

Model = TypeVar("Model", bound="SegmentationModel")
#: The model classes that load mmseg checkpoints, by their ``mmseg_model`` name ("danet"...):
#: filled as the classes are defined (``SegmentationModel.__init_subclass__``).
MMSEG_MODELS: dict[str, type[SegmentationModel]] = {}
FromConfig = Literal["config"]
# Keyword arguments that fetch weights when a model is built: a saved model has its own.
_WEIGHT_SOURCES = {"pretrained_backbone": False, "backbone_weights": None}


def fetch_mmseg_checkpoint(
    path_or_checkpoint: str | Path | Mapping[str, Any], model: type[SegmentationModel] | None = None
) -> tuple[MMSegCheckpoint | None, str | Path | Mapping[str, Any]]:
    """The release a checkpoint argument names (or None) and the checkpoint, downloaded if named.

    A release name or URL is downloaded once (hash checked); a path or loaded contents
    pass through. With ``model``, a release of another architecture is refused before
    any download.

    Args:
        path_or_checkpoint: a file, its loaded contents, a release's config name or a URL.
        model: the class that will load it, or None (any).

    Raises:
        ValueError: for a release of another architecture than ``model``'s.
    """
    if not isinstance(path_or_checkpoint, (str, Path)):
        return None, path_or_checkpoint
    entry = find_mmseg_checkpoint(path_or_checkpoint)
    if entry is not None and model is not None and entry.model != model.mmseg_model:
        owner = MMSEG_MODELS.get(entry.model)
        raise ValueError(
            f"{str(path_or_checkpoint)!r} is a release of mmseg's {entry.model!r} models; "
            f"{model.__name__}.from_mmseg loads {model.mmseg_model!r} releases: call "
            f"{owner.__name__ if owner else 'the matching class'}.from_mmseg or "
            "attnblocks.models.from_mmseg"
        )
    text = str(path_or_checkpoint)
    if not Path(path_or_checkpoint).is_file() and (text in MMSEG_CHECKPOINTS or "://" in text):
        return entry, load_mmseg_checkpoint(text)
    return entry, path_or_checkpoint


def mmseg_weights_source(
    path_or_checkpoint: str | Path | Mapping[str, Any], entry: MMSegCheckpoint | None
) -> str | None:
    """Where an mmseg checkpoint came from, for a model's ``weights_source``.

    Args:
        path_or_checkpoint: what ``from_mmseg`` was given.
        entry: the release it was recognised as, or None.

    Returns:
        The release's URL when it was recognised, else the path given; None for loaded
        contents of no known release.
    """
    if entry is not None:
        return entry.url
    return str(path_or_checkpoint) if isinstance(path_or_checkpoint, (str, Path)) else None


def main_logits(output: Tensor | Sequence[Tensor]) -> Tensor:
    """The prediction's logits in a model's output: the tensor, or a tuple's first element."""
    return output if isinstance(output, Tensor) else output[0]


class SegmentationModel(
    nn.Module,
    HubMixin,
    library_name="attnblocks",
    pipeline_tag="image-segmentation",
    tags=["semantic-segmentation", "attnblocks"],
):
    """Base of the segmentation models: a dilated timm backbone, a head, bilinear upsampling.

    Subclasses build ``self.head`` after calling ``super().__init__``; the head gets
    ``(B, encoder_channels, H / os, W / os)`` features (or, with several
    ``feature_levels``, the list of those levels' maps, shallowest first) and returns
    logits (or a NamedTuple of logit maps, the prediction first), which :meth:`forward`
    upsamples to the input size.

    Args:
        backbone: timm model name; any model that supports ``features_only`` and
            ``output_stride``.
        num_classes: number of classes.
        output_stride: 8 or 16; the last stages are dilated instead of strided.
        multi_grid: per-block dilations of the last ResNet stage; None keeps timm's.
        pretrained_backbone: load timm's ImageNet weights for the backbone (download).
        backbone_weights: local file of those weights, used instead of a download.
        align_corners: of the bilinear upsampling of the logits.
        backbone_kwargs: more keyword arguments for ``timm.create_model``.
        pretrained_config: normalisation, class names, palette and test-time resizing
            (a :class:`~attnblocks.pretrained.PretrainedConfig` or its dict); None:
            ImageNet statistics and generic class names.
        feature_levels: timm ``out_indices`` of the feature maps the head reads (for a
            ResNet 1..4 are ``layer1..layer4``, so mmseg's ``in_index`` i is level i + 1);
            None: the class's :attr:`feature_levels`.
    """

    head: nn.Module
    #: the backbone levels the head reads (timm ``out_indices``); one level: a tensor
    feature_levels: ClassVar[tuple[int, ...]] = (-1,)
    #: the compat table for mmsegmentation checkpoints of this architecture (None: none)
    mmseg_key_map: ClassVar[KeyMap | None] = None
    #: the name of the architecture in the release table (``MMSegCheckpoint.model``)
    mmseg_model: ClassVar[str | None] = None
    #: mmseg's decode head type(s) of the architecture (the last one of a cascade decides)
    mmseg_head_types: ClassVar[tuple[str, ...]] = ()
    #: state-dict key prefixes that only this architecture's mmseg checkpoints hold
    mmseg_head_keys: ClassVar[tuple[str, ...]] = ()
    #: the state-dict key of the classifier whose rows are the classes
    mmseg_classifier_key: ClassVar[str] = "decode_head.conv_seg.weight"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("mmseg_model")
        if name is not None:
            MMSEG_MODELS[name] = cls

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        output_stride: OutputStride = 8,
        multi_grid: Sequence[int] | None = None,
        pretrained_backbone: bool = False,
        backbone_weights: str | Path | None = None,
        align_corners: bool = False,
        backbone_kwargs: Mapping[str, Any] | None = None,
        pretrained_config: PretrainedConfigLike | None = None,
        feature_levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        backbone_kwargs = dict(backbone_kwargs or {})
        levels = tuple(self.feature_levels if feature_levels is None else feature_levels)
        backbone_kwargs.setdefault("out_indices", levels)
        self.backbone = create_backbone(
            backbone, output_stride, multi_grid, pretrained=pretrained_backbone,
            weights=backbone_weights, **backbone_kwargs,
        )  # fmt: skip
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.in_chans = int(backbone_kwargs.get("in_chans", 3))
        self.align_corners = align_corners
        self.pretrained_config = PretrainedConfig.resolve(pretrained_config, num_classes)

    @property
    def encoder_channels(self) -> int:
        """Channels of the deepest backbone features the head receives."""
        return int(self.backbone.feature_info.channels()[-1])

    @property
    def feature_channels(self) -> list[int]:
        """Channels of each feature map the head receives, shallowest first."""
        return [int(c) for c in self.backbone.feature_info.channels()]

    def forward(self, images: Tensor) -> Any:
        """Head logits upsampled to the size of ``images`` ``(B, in_chans, H, W)``."""
        name = type(self).__name__
        check_float_tensor(f"{name} input", images, ("B", "C", "H", "W"))
        if images.shape[1] != self.in_chans:
            raise ValueError(
                f"{name}'s backbone takes {self.in_chans}-channel images, got "
                f"{images.shape[1]} channels (shape {tuple(images.shape)})"
            )
        features = self.backbone(images)  # [(B, C_i, H / s_i, W / s_i)] per level
        logits = self.head(features[0] if len(features) == 1 else features)
        size = images.shape[-2:]

        def upsample(t: Tensor) -> Tensor:
            return F.interpolate(t, size=size, mode="bilinear", align_corners=self.align_corners)

        if isinstance(logits, Tensor):
            return upsample(logits)
        return type(logits)(*(upsample(t) for t in logits))  # a NamedTuple of logit maps

    @torch.inference_mode()
    def predict(self, images: Tensor) -> Tensor:
        """Label maps ``(B, H, W)`` from the prediction's logits, in eval mode (switched to it).

        Args:
            images: ``(B, in_chans, H, W)`` normalised images.
        """
        self.eval()
        return main_logits(self(images)).argmax(dim=1)

    @torch.inference_mode()
    def predict_image(
        self,
        image: ImageLike,
        *,
        crop_size: Size2 | FromConfig | None = "config",
        stride: Size2 | FromConfig | None = "config",
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        resize: bool = True,
        return_scores: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The label map of one image at the image's size, as mmseg's ``inference_model``.

        mmsegmentation 1.x's test pipeline, step for step: the image is read as its
        ``LoadImageFromFile`` reads it (:func:`~attnblocks.pretrained.read_rgb`: EXIF
        orientation applied, RGB), resized as uint8 with OpenCV's bilinear arithmetic
        to the :attr:`pretrained_config`'s ``image_scale`` (mmcv's keep-ratio
        ``Resize``; :func:`~attnblocks.pretrained.resize_uint8`), normalised, decoded
        whole or in sliding windows (window logits averaged, a view smaller than the
        window decoded unpadded: :func:`attnblocks.inference.predict_views`), and the
        logits resized to the image's size with the model's ``align_corners``.

        Several ``scales`` or ``flip`` run mmseg's test-time augmentation instead
        (``tta_pipeline``): each ratio resizes the image as read (the test resize is
        not applied), each view is also mirrored with ``flip``, and the softmax of
        the views' logits is averaged.

        Args:
            image: a file path, a PIL image, or a uint8 ``(H, W, 3)`` RGB array / tensor.
            crop_size: sliding-window size; ``"config"``: the pretrained config's
                (None there: the whole image at once); None: the whole image.
            stride: step between windows; ``"config"``: the pretrained config's with its
                window, else the default (2/3 of the crop).
            scales: test-time augmentation ratios (mmseg's ``img_ratios``, on the image
                as read); ``(1.0,)`` without ``flip`` is the plain test pipeline.
            flip: also predict each view mirrored left-right (test-time augmentation).
            resize: apply the config's ``image_scale`` in the plain pipeline; False
                predicts at the image's own size.
            return_scores: also return the scores the labels are the argmax of.

        Returns:
            ``(H, W)`` int64 labels on the CPU (class names in
            ``model.pretrained_config.class_names``, colours with
            ``model.pretrained_config.colorize(labels)``); with ``return_scores``,
            ``(labels, scores)``, scores ``(K, H, W)`` float32: the logits (plain
            pipeline) or the mean probabilities (test-time augmentation).
        """
        config = self.pretrained_config
        if self.in_chans != 3 or len(config.mean) != 3:
            raise ValueError(
                f"predict_image takes RGB images; this model takes {self.in_chans}-channel "
                f"input normalised with {len(config.mean)} means: call it on tensors instead"
            )
        pixels = read_rgb(image)  # (3, H, W) uint8, EXIF applied
        height, width = pixels.shape[-2:]
        ratios = _check_scales(scales)
        augmented = flip or ratios != (1.0,)
        if augmented:
            sizes = [tta_size(height, width, ratio) for ratio in ratios]
        else:
            sizes = [config.test_size(height, width) if resize else (height, width)]
        if stride == "config":  # the config's step belongs to the config's window only
            stride = config.stride if crop_size == "config" else None
        if crop_size == "config":
            crop_size = config.crop_size
        parameter = next(self.parameters())

        def views() -> Iterator[tuple[Tensor, bool]]:
            for size in sizes:  # one resized image at a time: views are made as needed
                resized = resize_uint8(pixels, size)
                x = config.normalize(resized.to(parameter.device)).unsqueeze(0)
                x = x.to(parameter.dtype)
                yield x, False
                if flip:
                    yield x.flip(-1), True

        self.eval()
        scores = predict_views(
            self, views(), size=(height, width), crop_size=crop_size, stride=stride,
            align_corners=self.align_corners,
        )[0]  # fmt: skip
        labels = scores.argmax(dim=0).cpu()
        return (labels, scores.cpu()) if return_scores else labels

    @classmethod
    def from_mmseg(
        cls: type[Model], path_or_checkpoint: str | Path | Mapping[str, Any], **kwargs: Any
    ) -> Model:
        """Build the model of an mmsegmentation checkpoint and load it strictly; eval mode.

        Reads the checkpoint (``weights_only``), infers the backbone depth (timm's
        ``resnet50c``/``resnet101c`` = mmseg's ResNetV1c) and ``num_classes`` from its
        weights, builds the model at output stride 8, converts the keys with the
        architecture's compat table (``auxiliary_head.*`` dropped) and loads them:
        anything missing, unexpected or misshapen raises a ValueError listing it all.

        The test setup (``align_corners``, and the :attr:`pretrained_config`: test
        resize, whole or sliding-window decoding, normalisation, class names, palette)
        comes from what the checkpoint says, each source overriding the one before:
        its ``meta`` (the config text mmseg writes into every checkpoint, read as data,
        and its dataset meta), then the release its name, URL or file name is, then
        the keyword arguments; so a release loaded from its name, from a renamed file
        or from a dict gets the same setup (:meth:`mmseg_model_options`). The model's
        ``weights_source`` records the release's URL (or the file given), which
        :meth:`save_pretrained` writes into ``config.json`` and the model card.

        Args:
            path_or_checkpoint: an mmseg ``.pth`` file, its loaded contents (``{"meta":
                ..., "state_dict": ...}`` or a bare state dict), a config name of
                :data:`attnblocks.pretrained.MMSEG_CHECKPOINTS` or a URL (downloaded once
                with its hash checked).
            **kwargs: further constructor arguments (``attention_backend``,
                ``align_corners``...); they override the inferred ones. A dict
                ``pretrained_config`` changes only the fields it names
                (``pretrained_config={"crop_size": (512, 512)}``).

        Raises:
            ValueError: for a backbone other than ResNetV1c-50/101, a release of another
                model, keys that are not part of the mmseg model, or missing, unexpected or
                misshapen keys.
            FileNotFoundError: for a path that is not a file, nor a known name or URL.
        """
        if cls.mmseg_key_map is None:
            raise NotImplementedError(f"{cls.__name__} has no table for mmseg checkpoints")
        entry, checkpoint = fetch_mmseg_checkpoint(path_or_checkpoint, cls)
        state_dict, meta = read_mmseg_checkpoint(checkpoint, f"{cls.__name__}.from_mmseg")
        model = cls.load_mmseg(state_dict, meta, entry, **kwargs)
        model.weights_source = mmseg_weights_source(path_or_checkpoint, entry)
        return model

    @classmethod
    def load_mmseg(
        cls: type[Model],
        state_dict: Mapping[str, Tensor],
        meta: Mapping[str, Any],
        entry: MMSegCheckpoint | None,
        **kwargs: Any,
    ) -> Model:
        """Build and strictly load the model of an already read mmseg checkpoint; eval mode.

        The step of :meth:`from_mmseg` (and :func:`attnblocks.models.from_mmseg`) after
        reading the file: keys converted with :attr:`mmseg_key_map`, constructor
        arguments from :meth:`mmseg_model_options` overridden by ``kwargs``.

        Args:
            state_dict: the weights, mmseg key names, ``module.`` stripped.
            meta: the checkpoint's ``meta`` (``{}`` without one).
            entry: the release the checkpoint was recognised as, or None.
            **kwargs: constructor arguments that override the inferred ones (a dict
                ``pretrained_config`` only the fields it names).
        """
        key_map = cls.mmseg_key_map
        if key_map is None:
            raise NotImplementedError(f"{cls.__name__} has no table for mmseg checkpoints")
        options = cls.mmseg_model_options(state_dict, meta, entry)  # backbone checked first
        converted = key_map.convert(state_dict)  # unknown keys fail here, before building
        changes = kwargs.get("pretrained_config")
        inferred = options.get("pretrained_config")
        if isinstance(changes, Mapping) and isinstance(inferred, PretrainedConfig):
            kwargs["pretrained_config"] = {**inferred.to_dict(), **changes}  # field by field
        model = cls(**{**options, **kwargs})
        load_state_dict_strictly(model, converted, key_map.hint)
        return model.eval()

    @classmethod
    def mmseg_model_options(
        cls,
        state_dict: Mapping[str, Tensor],
        meta: Mapping[str, Any],
        entry: MMSegCheckpoint | None,
    ) -> dict[str, Any]:
        """The constructor arguments of the model an mmseg checkpoint holds.

        The backbone and the number of classes come from the weights; ``align_corners``
        (:func:`~attnblocks.pretrained.mmseg_align_corners`) and the
        :class:`~attnblocks.pretrained.PretrainedConfig`
        (:func:`~attnblocks.pretrained.mmseg_pretrained_config`) from the meta, then the
        release, the later overriding the earlier. A model whose head has settings the
        weights show (a mask size, a number of bases) extends this
        (``options = super().mmseg_model_options(...)``).

        Args:
            state_dict: the checkpoint's weights, mmseg key names, ``module.`` stripped.
            meta: the checkpoint's ``meta`` (``{}`` without one).
            entry: the release the checkpoint was recognised as, or None.
        """
        num_classes = mmseg_num_classes(state_dict, cls.mmseg_classifier_key)
        return dict(
            backbone=mmseg_backbone_name(state_dict), num_classes=num_classes, output_stride=8,
            align_corners=mmseg_align_corners(meta, entry),
            pretrained_config=mmseg_pretrained_config(num_classes, meta, entry),
        )  # fmt: skip

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> Any:
        """Write ``config.json``, ``model.safetensors`` and a model card into a folder.

        ``config.json`` holds what rebuilds the model: backbone, classes, output stride,
        multi-grid, alignment, attention settings and the :attr:`pretrained_config`
        (normalisation, class names, palette, test resize and window), with the class
        that saved it (``"model_class": "DANet"``, which ``from_pretrained`` checks) and,
        when the model has a ``weights_source`` attribute (a release URL, a file), where
        its weights came from. Arguments that are not JSON (a custom ``norm_layer``) are
        not saved: pass them again to ``from_pretrained``. The model card (``README.md``,
        kept if the folder has one) gives the architecture, backbone, classes, source
        checkpoint and preprocessing. Needs the ``hub`` extra.

        Args:
            save_directory: the folder (created if needed).
            **kwargs: passed to ``PyTorchModelHubMixin.save_pretrained``
                (``push_to_hub=True``, ``repo_id``...).
        """
        from .. import __version__
        from ._hub import HUB_AVAILABLE, MODEL_CLASS_KEY, WEIGHTS_SOURCE_KEY, model_card

        if not HUB_AVAILABLE:  # the stand-in raises its ImportError; nothing is written
            return super().save_pretrained(save_directory, **kwargs)
        config = kwargs.get("config")
        if config is None:  # (push_to_hub passes config=None through to here)
            config = dict(getattr(self, "_hub_mixin_config", None) or {})
            config.update(_WEIGHT_SOURCES)  # the saved weights replace any ImageNet download
            config["pretrained_config"] = self.pretrained_config.to_dict()
        if isinstance(config, Mapping):
            config = {**config, MODEL_CLASS_KEY: type(self).__name__,
                      "attnblocks_version": __version__}  # fmt: skip
            source = getattr(self, WEIGHTS_SOURCE_KEY, None)
            if source is not None:
                config[WEIGHTS_SOURCE_KEY] = str(source)
        kwargs["config"] = config
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        card = folder / "README.md"
        if not card.exists() and isinstance(config, Mapping):  # the mixin keeps an existing one
            card_data = getattr(getattr(self, "_hub_mixin_info", None), "model_card_data", None)
            card.write_text(model_card(self, config, card_data))
        return super().save_pretrained(save_directory, **kwargs)

    @classmethod
    def _from_pretrained(
        cls, *, config: Mapping[str, Any] | None = None, strict: bool = True, **kwargs: Any
    ) -> Any:
        """The mixin's loader: strict, and only for a folder this class saved.

        Args:
            config: the folder's ``config.json`` (the mixin passes it; None: it has none).
            strict: every weight of the model must be in the file.
            **kwargs: the mixin's (``model_id``, download options) and the constructor's.

        Raises:
            FileNotFoundError: the folder (or Hub repository) has no ``config.json``, so
                nothing says which model it holds, or a folder has no ``model.safetensors``.
            ValueError: ``config.json`` names another model class (``"model_class"``).
        """
        from ._hub import MODEL_CLASS_KEY, WEIGHTS_SOURCE_KEY

        model_id, name = kwargs["model_id"], cls.__name__
        if config is None:
            raise FileNotFoundError(
                f"{model_id} has no config.json, so nothing says which model it holds: "
                f"{name}.from_pretrained loads folders written by save_pretrained"
            )
        saved = config.get(MODEL_CLASS_KEY)
        if saved is not None and saved != name:  # (folders saved before the key: not checked)
            raise ValueError(
                f"{model_id} holds a saved {saved}, not a {name}: load it with "
                f"{saved}.from_pretrained"
            )
        if Path(model_id).is_dir() and not (Path(model_id) / "model.safetensors").is_file():
            raise FileNotFoundError(f"{model_id} has config.json but no model.safetensors")
        model = super()._from_pretrained(strict=strict, **kwargs)  # type: ignore[misc]
        source = config.get(WEIGHTS_SOURCE_KEY)
        model.weights_source = source if source is not None else model_id
        return model.eval()  # huggingface_hub < 2 leaves it in training mode

"""Train DANet (or CCNet, or any model attnblocks registers) with the paper's recipe, then evaluate.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983

Recipe: SGD (momentum 0.9, weight decay 1e-4), poly learning rate ``(1 - iter/max)^0.9``
with the head at ``--head-lr-mult`` times the base rate, random scale, random crop
(padded with the ignore label), horizontal flip, ImageNet normalisation, and
cross-entropy on the fused output and on both attention branches. ``--model ccnet``
trains CCNet (Huang et al., ICCV 2019) the same way, with cross-entropy on its one
output (mmseg's auxiliary FCN head is not part of attnblocks' CCNet); so does every other
model of ``attnblocks.models.MMSEG_MODELS`` (cross-entropy on its prediction), with
``--model-arg KEY=VALUE`` for its constructor's own arguments.

One process (the demo; 5 to 6 minutes on this project's 2-core Intel Xeons, see
https://attnblocks.readthedocs.io/training/#the-demo)::

    python examples/train.py

Several processes or GPUs, on one machine or many (torch.distributed: DDP,
DistributedSampler, SyncBatchNorm on GPUs; gloo on CPU, nccl on CUDA)::

    torchrun --nproc_per_node=4 examples/train.py --dataset cityscapes --data-root DATA ...

Outputs in ``--out``: ``train.log``, checkpoints (``checkpoint.pt``, the newest, and
``checkpoint-<iteration>.pt`` for the last ``--keep-checkpoints``; written atomically, for
``--resume``), ``metrics.json`` and two pictures, ``predictions.png`` and ``attention.png``.
A folder that already holds a run is continued with ``--resume`` or replaced with
``--overwrite``, never silently. SIGTERM (a preempted job) or Ctrl-C ends the current
iteration, writes its checkpoint and a log line, and exits with status 128 + the signal's
number (143, 130); ``--resume`` then ends as an uninterrupted run would.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `examples.*` when run as a script

from attnblocks.functional import POSITION_BACKENDS
from attnblocks.inference import predict_scores
from attnblocks.losses import DANetLoss, SegmentationCrossEntropy
from attnblocks.metrics import SegmentationMetrics
from attnblocks.models import DANet, main_logits
from attnblocks.models.base import SegmentationModel
from examples.checkpoints import (
    LATEST,
    MODELS,
    CheckpointError,
    attention_gammas,
    constructor_parameters,
    latest_checkpoint,
    model_name,
    numbered_checkpoints,
    save_checkpoint,
)
from examples.cli import (
    HelpFormatter,
    backbone_problem,
    default_workers,
    device_problem,
    key_value,
    momentum,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from examples.datasets import DATASET_NAMES, build_dataset, dataset_palette
from examples.synthetic import CONTEXT_CLASSES, SyntheticScenes
from examples.transforms import EvalTransform, SeededAugmentation, TrainAugment

log = logging.getLogger("train")

# Per-dataset defaults; a flag given on the command line wins. workers None: default_workers().
DEFAULTS: dict[str, dict[str, Any]] = {
    "synthetic": dict(backbone="resnet18", backbone_stage=2, crop_size=128, batch_size=8,
                      iters=2000, lr=0.01, scale_range=(1.0, 1.0), workers=0, eval_crop=None),
    "cityscapes": dict(backbone="resnet101", crop_size=768, batch_size=8, iters=None, epochs=240,
                       lr=0.01, scale_range=(0.75, 2.0), workers=None, eval_crop=768),
    "ade20k": dict(backbone="resnet101", crop_size=512, batch_size=16, iters=None, epochs=120,
                   lr=0.01, scale_range=(0.75, 2.0), workers=None, eval_crop=512),
    "voc": dict(backbone="resnet101", crop_size=480, batch_size=16, iters=None, epochs=50,
                lr=0.01, scale_range=(0.75, 2.0), workers=None, eval_crop=480),
}  # fmt: skip
SYNTHETIC_SIZE = (128, 128)
SYNTHETIC_TRAIN, SYNTHETIC_VAL = 20_000, 300
# what a run writes into --out; --overwrite deletes these (and the numbered checkpoints) only
RUN_FILES = (LATEST, "train.log", "metrics.json", "predictions.png", "attention.png")
# constructor arguments that train.py's own flags set: --model-arg may not set them
_SET_BY_FLAGS = {"backbone": "--backbone", "num_classes": "the dataset",
                 "output_stride": "--output-stride", "multi_grid": "--multi-grid",
                 "backbone_kwargs": "--backbone-stage", "pretrained_backbone":
                 "--pretrained-backbone", "backbone_weights": "--backbone-weights",
                 "attention_backend": "--attention-backend", "recurrence": "--recurrence",
                 "pretrained_config": "the dataset"}  # fmt: skip


class RunError(Exception):
    """A mistake in the command line or the run folder, reported in one line."""


class Interrupted(Exception):
    """SIGTERM or SIGINT stopped the run; ``signum`` is the signal's number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class SignalCatcher:
    """Turns SIGTERM and SIGINT into a stop at the end of the current training iteration.

    While ``deferred`` (training) a signal is only remembered in ``received``: the loop
    finishes the iteration, writes its checkpoint and stops. Otherwise (setup, evaluation:
    nothing to save) and for a second signal it raises :class:`Interrupted` at once.
    Handlers are installed from the main thread only (Python allows no other).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferred = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalCatcher:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        again = self.received is not None
        self.received = signum
        if again or not self.deferred:
            name = signal.Signals(signum).name
            raise Interrupted(signum, f"stopped by {name}" + (" (again)" if again else ""))


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch after its first ``skip`` samples (on resume)."""

    skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.skip :])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train.py", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    add = parser.add_argument
    add(
        "--dataset",
        default="synthetic",
        choices=["synthetic", *DATASET_NAMES],
        help="synthetic: generated scenes, no files (the demo); the others read --data-root",
    )
    add("--data-root", type=Path, help="dataset folder (standard layout, see examples/datasets.py)")
    add("--model", default="danet", choices=sorted(MODELS),
        help="the network to train: a model of attnblocks.models.MMSEG_MODELS")  # fmt: skip
    add(
        "--model-arg",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another argument of the model's constructor, e.g. head_dropout=0.2 "
        "(a Python literal, else text); repeat for more",
    )
    add(
        "--backbone",
        help="any timm model name (default: resnet18 for synthetic, resnet101 "
        "as in the paper otherwise)",
    )
    add("--output-stride", type=int, default=8, choices=[8, 16], help="backbone output stride")
    add(
        "--multi-grid",
        type=positive_int,
        nargs="+",
        metavar="D",
        help="last-stage dilations, e.g. 4 8 16 as the authors' DANet-101 (bottleneck ResNets)",
    )
    add(
        "--backbone-stage",
        type=non_negative_int,
        metavar="K",
        help="take the features of backbone stage K instead of the last (synthetic default: 2, "
        "resnet18's stride-8 stage, whose receptive field is smaller than the image; a head "
        "that reads several levels takes them all)",
    )
    add("--pretrained-backbone", action="store_true", help="timm's ImageNet weights (download)")
    add("--backbone-weights", type=Path, help="local file of the backbone's ImageNet weights")
    add("--crop-size", type=positive_int, help="training crop side (default per dataset)")
    add(
        "--scale-range",
        type=positive_float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="random rescaling range (paper: 0.75 2.0; synthetic default 1 1, as cropping "
        "could cut away the lamp that decides the vehicles' class)",
    )
    add("--no-flip", action="store_true", help="no random horizontal flip")
    add("--batch-size", type=positive_int,
        help="images per step per process (default per dataset)")  # fmt: skip
    add("--iters", type=positive_int, help="training iterations (synthetic default 2000)")
    add("--epochs", type=positive_int,
        help="training epochs instead of --iters (real datasets' default)")  # fmt: skip
    add("--lr", type=positive_float,
        help="base learning rate, poly schedule with power 0.9 (paper: 0.01)")  # fmt: skip
    add("--head-lr-mult", type=non_negative_float, default=10.0,
        help="head learning rate / base rate")  # fmt: skip
    add("--momentum", type=momentum, default=0.9, help="SGD momentum")
    add("--weight-decay", type=non_negative_float, default=1e-4, help="SGD weight decay")
    add(
        "--aux-weights",
        type=non_negative_float,
        nargs=2,
        metavar=("PAM", "CAM"),
        help="DANet: loss weights of the two attention branches (default: 1 1, the authors')",
    )
    add(
        "--no-attention",
        action="store_true",
        help="baseline: the attention gammas fixed at 0, so the attention never contributes",
    )
    add(
        "--attention-backend",
        default="auto",
        choices=POSITION_BACKENDS,
        help="the position-attention backend of models that take one (DANet: PAM's)",
    )
    add("--recurrence", type=positive_int,
        help="CCNet: criss-cross passes (default: 2, the paper's)")  # fmt: skip
    add("--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU)")
    add("--channels-last", action="store_true", help="channels-last memory format")
    add(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (under torchrun each process takes cuda:LOCAL_RANK)",
    )
    add(
        "--workers",
        type=non_negative_int,
        help="data loading processes per training process (default: 0 for synthetic, else up "
        "to 4, no more than this process's share of the CPUs)",
    )
    add("--seed", type=int, default=0, help="seed of initialisation, data order and augmentation")
    add(
        "--eval-crop",
        type=positive_int,
        help="sliding-window size for the final evaluation "
        "(default: whole images for synthetic, the crop size otherwise)",
    )
    add("--eval-scales", type=positive_float, nargs="+", default=[1.0], help="evaluation scales")
    add("--eval-flip", action="store_true", help="also evaluate flipped images")
    add("--val-limit", type=positive_int, help="evaluate on the first N validation images only")
    add("--log-every", type=positive_int, default=50, help="iterations between log lines")
    add("--checkpoint-every", type=positive_int, default=500,
        help="iterations between checkpoints")  # fmt: skip
    add(
        "--keep-checkpoints",
        type=positive_int,
        default=3,
        metavar="K",
        help="keep the last K checkpoints (a damaged newest one falls back to the one before)",
    )
    add("--out", type=Path, help="output folder (default: runs/<model>, e.g. runs/danet)")
    add(
        "--resume",
        action="store_true",
        help="continue the run in OUT from its newest readable checkpoint",
    )
    add(
        "--overwrite",
        action="store_true",
        help="delete the run already in OUT (checkpoints, log, metrics, pictures), start anew",
    )
    add(
        "--stop-at",
        type=positive_int,
        help="stop after this iteration as if interrupted "
        "(checkpoint written first): for testing --resume",
    )
    add("--no-pictures", action="store_true", help="skip predictions.png and attention.png")
    args = parser.parse_args(argv)  # fmt: skip
    if args.iters is not None and args.epochs is not None:
        parser.error("give --iters or --epochs, not both")
    if args.resume and args.overwrite:
        parser.error(
            "give --resume (continue the run in --out) or --overwrite (replace it), not both"
        )
    if args.scale_range is not None and args.scale_range[0] > args.scale_range[1]:
        parser.error(f"--scale-range LOW HIGH needs LOW <= HIGH, got {args.scale_range}")
    length_given = args.iters is not None or args.epochs is not None
    for key, value in DEFAULTS[args.dataset].items():
        if key in ("iters", "epochs") and length_given:
            continue  # the length the user asked for replaces the dataset's default length
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.workers is None:
        args.workers = default_workers()
    if args.out is None:
        args.out = Path("runs") / args.model
    check_model_flags(parser, args)
    for problem in (backbone_problem(args.backbone), device_problem(args.device)):
        if problem is not None:
            parser.error(problem)
    if args.dataset != "synthetic" and args.data_root is None:
        parser.error(f"--dataset {args.dataset} needs --data-root")
    return args


def check_model_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse flags the chosen model has no use for; fill the model-specific defaults.

    A flag applies where the model's constructor takes its argument (``--recurrence``:
    ``recurrence``, ``--attention-backend``: ``attention_backend``); ``--aux-weights``
    weighs DANet's two branch losses. ``--model-arg`` keys must be constructor arguments
    that no flag sets.
    """
    model_class = MODELS[args.model]
    parameters = constructor_parameters(model_class)
    given = {"--aux-weights": args.aux_weights is not None,
             "--attention-backend": args.attention_backend != "auto",
             "--recurrence": args.recurrence is not None}  # fmt: skip
    applies = {"--aux-weights": issubclass(model_class, DANet),
               "--attention-backend": "attention_backend" in parameters,
               "--recurrence": "recurrence" in parameters}  # fmt: skip
    wrong = [flag for flag in given if given[flag] and not applies[flag]]
    if wrong:
        parser.error(f"{', '.join(wrong)} do(es) not apply to --model {args.model}")
    if applies["--aux-weights"] and args.aux_weights is None:
        args.aux_weights = (1.0, 1.0)
    if applies["--recurrence"] and args.recurrence is None:
        args.recurrence = parameters["recurrence"].default  # CCNet: 2, the paper's
    for key, _ in args.model_arg:
        if key in _SET_BY_FLAGS:
            parser.error(f"--model-arg {key}=...: {key} is set by {_SET_BY_FLAGS[key]}")
        if key not in parameters:
            known = sorted(set(parameters) - set(_SET_BY_FLAGS) - {"args", "kwargs"})
            parser.error(f"--model-arg {key}=...: {model_class.__name__} takes no argument "
                         f"{key!r}; it takes {', '.join(known)}")  # fmt: skip
    args.model_arg = dict(args.model_arg)


def setup_distributed(args: argparse.Namespace) -> tuple[int, int, torch.device]:
    """Initialise torch.distributed under torchrun; return rank, world size and device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(args.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def setup_logging(out: Path, rank: int) -> list[logging.Handler]:
    """Log to the console and (process 0) to ``out/train.log``; return the handlers installed."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(out / "train.log"))  # appends on --resume
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(message)s",
        handlers=handlers,
        force=True,
    )
    return handlers


def rank0_decides(value: Any, world_size: int) -> Any:
    """Process 0's ``value`` on every process (it alone may see the output folder)."""
    if world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def existing_run_files(out: Path) -> list[Path]:
    """The files of a previous run in ``out``: log, metrics, pictures and checkpoints."""
    files = [out / name for name in RUN_FILES if (out / name).exists()]
    return files + numbered_checkpoints(out)


def holds_a_run(out: Path) -> bool:
    """Whether ``out`` holds a run: a checkpoint (a start that failed before one is none)."""
    return (out / LATEST).exists() or bool(numbered_checkpoints(out))


def prepare_run_folder(args: argparse.Namespace, rank: int, world_size: int) -> list[Path]:
    """Refuse to mix a new run with one already in ``--out``; delete it with ``--overwrite``.

    A folder without a checkpoint holds no run: the files of a start that failed before
    its first checkpoint (an empty ``train.log``) are replaced without asking, and
    ``--resume`` there says that there is nothing to resume.

    Returns:
        The files deleted (process 0).
    """
    previous = existing_run_files(args.out) if rank == 0 else []
    is_run = rank == 0 and holds_a_run(args.out)
    problem = None
    if is_run and not (args.resume or args.overwrite):
        names = ", ".join(path.name for path in previous[:4]) + (
            ", ..." if len(previous) > 4 else ""
        )
        problem = (f"{args.out} already holds a run ({names}); pass --resume to continue it, "
                   "--overwrite to replace it, or another --out")  # fmt: skip
    elif rank == 0 and args.resume and not is_run:
        problem = f"no checkpoint at {args.out / LATEST}: nothing to --resume"
    problem = rank0_decides(problem, world_size)
    if problem is not None:
        raise (FileNotFoundError if args.resume else RunError)(problem)
    deleted = [] if args.resume else previous  # --overwrite, or the files of a failed start
    for path in deleted:
        path.unlink()
    return deleted


def synthetic_validation_set(seed: int) -> SyntheticScenes:
    """The synthetic validation scenes of a run with ``seed`` (disjoint from its training seed)."""
    return SyntheticScenes(SYNTHETIC_VAL, SYNTHETIC_SIZE, seed=seed + 1_000_000,
                           transform=EvalTransform())  # fmt: skip


def build_datasets(args: argparse.Namespace) -> tuple[Dataset, Dataset, tuple[str, ...]]:
    """Training set (augmented) and validation set (normalised) of ``args.dataset``."""
    crop = (args.crop_size, args.crop_size)
    augment = TrainAugment(crop, args.scale_range, flip=not args.no_flip)
    if args.dataset == "synthetic":
        train = SyntheticScenes(SYNTHETIC_TRAIN, SYNTHETIC_SIZE, seed=args.seed)
        val = synthetic_validation_set(args.seed)
    else:
        train = build_dataset(args.dataset, args.data_root, "train")
        val = build_dataset(args.dataset, args.data_root, "val", transform=EvalTransform())
    return SeededAugmentation(train, augment, args.seed), val, tuple(train.classes)


def build_model(args: argparse.Namespace, num_classes: int) -> SegmentationModel:
    """The ``--model`` network, with the backbone's ImageNet weights when asked for.

    Raises:
        RunError: the model cannot be built as asked (a backbone without the features
            it needs, a ``--model-arg`` value it refuses), or ``--no-attention`` for a
            model without attention gammas.
    """
    try:
        model = MODELS[args.model](
            **model_config(args, num_classes),
            pretrained_backbone=args.pretrained_backbone,
            backbone_weights=args.backbone_weights,
        )
    except (ValueError, TypeError, RuntimeError) as error:  # timm and the models say what
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise RunError(
            f"cannot build --model {args.model} --backbone {args.backbone}: {reason}"
        ) from error
    gammas = attention_gammas(model)
    if args.no_attention and not gammas:
        raise RunError(f"--no-attention holds the attention gammas at 0, and "
                       f"{type(model).__name__} has none")  # fmt: skip
    if args.no_attention:
        for gamma in gammas.values():
            gamma.requires_grad_(False)  # stays at its initial 0: attention adds nothing
    return model


def model_config(args: argparse.Namespace, num_classes: int) -> dict[str, Any]:
    """What evaluate.py needs to rebuild the model of a checkpoint (with ``args.model``)."""
    stage = {} if args.backbone_stage is None else {"out_indices": (args.backbone_stage,)}
    if len(MODELS[args.model].feature_levels) > 1:
        stage = {}  # a head that reads several levels takes them from the whole backbone
    config = dict(backbone=args.backbone, num_classes=num_classes,
                  output_stride=args.output_stride, multi_grid=args.multi_grid,
                  backbone_kwargs=stage)  # fmt: skip
    parameters = constructor_parameters(MODELS[args.model])
    if "attention_backend" in parameters:
        config["attention_backend"] = args.attention_backend
    if "recurrence" in parameters:
        config["recurrence"] = args.recurrence
    return {**config, **args.model_arg}


def training_loss(args: argparse.Namespace) -> nn.Module:
    """DANet's three-branch loss for DANet; cross-entropy on the prediction otherwise."""
    if issubclass(MODELS[args.model], DANet):
        return DANetLoss(aux_weights=args.aux_weights)
    return _PredictionLoss()


class _PredictionLoss(nn.Module):
    """Cross-entropy (void ignored) on a model's prediction: its output or the tuple's first."""

    def __init__(self) -> None:
        super().__init__()
        self.cross_entropy = SegmentationCrossEntropy()

    def forward(self, output: Any, labels: torch.Tensor) -> torch.Tensor:
        return self.cross_entropy(main_logits(output), labels)


def poly_lr(iteration: int, total: int) -> float:
    """The poly schedule's factor ``(1 - iteration / total) ^ 0.9``."""
    return (1 - iteration / total) ** 0.9


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random states: CPU torch, numpy, Python, and its own GPU's."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())  # RNG states must be CPU byte tensors
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def all_rng_states(device: torch.device, world_size: int) -> list[dict[str, Any]]:
    """Every process's :func:`rng_state`, indexed by rank (each GPU has its own stream)."""
    if world_size == 1:
        return [rng_state(device)]
    states: list[Any] = [None] * world_size
    dist.all_gather_object(states, rng_state(device))
    return states


def seed_dropout_per_process(seed: int, rank: int) -> None:
    """Give each process its own stream for dropout, after the model's (shared) initialisation.

    Process 0 keeps the stream of a one-process run, so the demo's results do not depend
    on how it is launched; the others draw from seeds derived from ``(seed, rank)``.
    """
    if rank > 0:
        torch.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))


def broadcast_buffers(model: nn.Module, world_size: int) -> None:
    """Give every process process 0's buffers (BatchNorm statistics), as in the checkpoint.

    Without SyncBatchNorm (CPU processes) each process's last steps update its own
    running statistics; DDP only copies process 0's buffers at the next forward.
    """
    if world_size > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def evaluate(model: nn.Module, dataset: Dataset, args: argparse.Namespace, num_classes: int,
             device: torch.device, rank: int, world_size: int) -> SegmentationMetrics:  # fmt: skip
    """Metrics of ``model`` on ``dataset``, each process scoring every world_size-th image."""
    metrics = SegmentationMetrics(num_classes, device=device)
    count = len(dataset) if args.val_limit is None else min(args.val_limit, len(dataset))
    shard = Subset(dataset, range(rank, count, world_size))
    # Whole synthetic scenes share one size; real images differ, or go through sliding windows.
    batch_size = 16 if args.dataset == "synthetic" and not args.eval_crop else 1
    loader = DataLoader(shard, batch_size=batch_size, num_workers=args.workers)
    model.eval()
    for images, labels in loader:
        scores = predict_scores(
            model, images.to(device), crop_size=args.eval_crop, scales=args.eval_scales,
            flip=args.eval_flip, recipe="danet",  # the paper's evaluation
        )  # fmt: skip
        metrics.update(scores.argmax(dim=1), labels.to(device))
    metrics.all_reduce()
    return metrics


def summarise(metrics: SegmentationMetrics, classes: tuple[str, ...]) -> dict[str, Any]:
    """``metrics.summary``, plus ``context_miou`` over the context classes that occur.

    A class absent from both labels and predictions (a few validation images, say) has
    no IoU: it is left out of the mean, which is None when no context class occurs.
    """
    result = metrics.summary(classes)
    context = [result["per_class_iou"].get(name) for name in CONTEXT_CLASSES]
    present = [iou for iou in context if iou is not None]
    if any(name in classes for name in CONTEXT_CLASSES):
        result["context_miou"] = sum(present) / len(present) if present else None
    return result


def train(args: argparse.Namespace) -> dict[str, Any] | None:
    """Train, checkpoint and evaluate as ``args`` say; return the metrics (process 0).

    Returns None when stopped by ``--stop-at``. Raises :class:`Interrupted` after
    writing a checkpoint when SIGTERM or SIGINT arrives, :class:`RunError` for a run
    folder that holds another run, and :class:`~examples.checkpoints.CheckpointError`
    when no checkpoint can be resumed.
    """
    rank, world_size, device = setup_distributed(args)
    handlers: list[logging.Handler] = []
    try:
        with SignalCatcher() as signals:
            deleted = prepare_run_folder(args, rank, world_size)
            handlers = setup_logging(args.out, rank)
            if deleted and not args.overwrite:
                log.info("%s held no checkpoint: replaced %s of a start that failed",
                         args.out, ", ".join(path.name for path in deleted))  # fmt: skip
            return _train(args, rank, world_size, device, signals)
    finally:
        for handler in handlers:
            logging.getLogger().removeHandler(handler)
            handler.close()
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(args: argparse.Namespace, rank: int, world_size: int, device: torch.device,
           signals: SignalCatcher) -> dict[str, Any] | None:  # fmt: skip
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    train_set, val_set, classes = build_datasets(args)
    num_classes = len(classes)

    model = build_model(args, num_classes)
    seed_dropout_per_process(args.seed, rank)  # after the identical initialisation
    if world_size > 1 and device.type == "cuda":
        # torch's SyncBatchNorm runs on GPUs only; CPU processes keep per-process statistics.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    head_params = [p for p in model.head.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        [{"params": list(model.backbone.parameters()), "lr": args.lr},
         {"params": head_params, "lr": args.lr * args.head_lr_mult}],
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
    )  # fmt: skip
    net = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if world_size > 1
        else model
    )
    criterion = training_loss(args)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and amp_dtype == torch.float16)

    sampler = ResumableSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True,
                               seed=args.seed, drop_last=True)  # fmt: skip
    loader = DataLoader(
        train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
        drop_last=True, pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # the loader's own seed draws leave the global RNG alone
    )  # fmt: skip
    batches_per_epoch = len(loader)
    if batches_per_epoch == 0:
        raise RunError(
            f"{len(train_set)} training images make less than one batch of --batch-size "
            f"{args.batch_size} for each of {world_size} process(es); lower --batch-size"
        )
    total = args.iters if args.epochs is None else args.epochs * batches_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: poly_lr(it, total))

    iteration, seconds_before = 0, 0.0
    if args.resume:
        # Loaded on the CPU: RNG states must stay there; the rest follows the parameters.
        checkpoint_path, checkpoint = latest_checkpoint(args.out)
        trained = model_name(checkpoint)
        if trained != args.model:
            raise RunError(
                f"{checkpoint_path} holds a {trained} run; resume it with --model {trained}, "
                f"not {args.model}"
            )
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])  # its schedule wins over a new --lr
        scaler.load_state_dict(checkpoint["scaler"])
        states = checkpoint["rng"]
        if len(states) != world_size:
            raise RunError(
                f"the checkpoint was written by {len(states)} processes; resume it with as many, "
                f"not {world_size}"
            )
        set_rng_state(states[rank], device)
        iteration, seconds_before = checkpoint["iteration"], checkpoint["seconds"]
        log.info("resumed from %s at iteration %d", checkpoint_path, iteration)

    def write_checkpoint() -> Path | None:
        """Every process takes part (RNG states are gathered); process 0 writes."""
        state = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": all_rng_states(device, world_size), "iteration": iteration,
            "seconds": seconds_before + time.perf_counter() - started,
            "model_name": args.model, "model_config": model_config(args, num_classes),
            "classes": classes,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        }  # fmt: skip
        return save_checkpoint(args.out, state, args.keep_checkpoints) if rank == 0 else None

    log.info("training %s-%s on %s for %d iterations (%d per epoch) on %s x %d, batch "
             "%d/process", args.model, args.backbone, args.dataset, total, batches_per_epoch,
             device, world_size, args.batch_size)  # fmt: skip
    started = time.perf_counter()
    net.train()
    with _progress_bar(total, iteration, rank) as progress:
        signals.deferred = True  # from here on a signal ends the iteration with a checkpoint
        while iteration < total:
            epoch, batch_in_epoch = divmod(iteration, batches_per_epoch)
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            sampler.skip = batch_in_epoch * args.batch_size  # resume mid-epoch where it stopped
            for images, labels in loader:
                images = images.to(device, non_blocking=True, memory_format=memory_format)
                labels = labels.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
                    loss = criterion(net(images), labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                lr = optimizer.param_groups[0]["lr"]  # this step's; scheduler.step() sets the next
                scheduler.step()
                iteration += 1
                gammas = {name: gamma.item() for name, gamma in attention_gammas(model).items()}
                _report(progress, iteration, loss.item(), lr, gammas, args.log_every)
                stop_signal = _agreed_signal(signals, device, world_size)
                if stop_signal:
                    written = write_checkpoint() or args.out  # (process 0 knows the file)
                    name = signal.Signals(stop_signal).name
                    log.warning("%s at iteration %d: checkpoint written to %s; continue with "
                                "--resume", name, iteration, written)  # fmt: skip
                    raise Interrupted(stop_signal, f"stopped by {name} at iteration {iteration}")
                if iteration % args.checkpoint_every == 0 or iteration in (total, args.stop_at):
                    write_checkpoint()
                if iteration == args.stop_at:
                    log.info("stopping at iteration %d as asked (--stop-at)", iteration)
                    if world_size > 1:
                        dist.barrier()
                    return None
                if iteration >= total:
                    break
        stop_signal = _agreed_signal(signals, device, world_size)  # during the last checkpoint?
        signals.deferred = False  # the last checkpoint is written: a signal now just stops
    if stop_signal:
        name = signal.Signals(stop_signal).name
        log.warning("%s after the last iteration: its checkpoint is written; no evaluation", name)
        raise Interrupted(stop_signal, f"stopped by {name} before the evaluation")
    seconds = seconds_before + time.perf_counter() - started
    log.info("trained %d iterations in %.0f s; evaluating", total, seconds)

    broadcast_buffers(model, world_size)  # every process scores the checkpoint's model
    metrics = evaluate(model, val_set, args, num_classes, device, rank, world_size)
    result = None
    if rank == 0:
        result = {**summarise(metrics, classes), "iters": total, "seconds": seconds,
                  "dataset": args.dataset, "model": args.model, "backbone": args.backbone,
                  "attention": not args.no_attention, "world_size": world_size,
                  "gammas": {name: gamma.item()
                             for name, gamma in attention_gammas(model).items()}}  # fmt: skip
        (args.out / "metrics.json").write_text(json.dumps(result, indent=1))
        log.info("mIoU %.4f, pixel accuracy %.4f", result["miou"], result["pixel_acc"])
        for name, iou in result["per_class_iou"].items():
            log.info("  %-14s %s", name, "-" if iou is None else f"{iou:.4f}")
        if not args.no_pictures:
            _draw_pictures(model, val_set, classes, args.out, device, args.dataset)
    return result


def _agreed_signal(signals: SignalCatcher, device: torch.device, world_size: int) -> int:
    """The signal any process received (0: none), the same on all: they stop together."""
    received = signals.received or 0
    if world_size == 1:
        return received
    flag = torch.tensor([received], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


@contextmanager
def _progress_bar(total: int, start: int, rank: int) -> Iterator[Any]:
    """A tqdm bar on process 0 (None elsewhere or without tqdm); log lines print above it."""
    if rank != 0:
        yield None
        return
    try:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:  # the examples extra brings tqdm; without it the log lines suffice
        yield None
        return
    with logging_redirect_tqdm(), tqdm(total=total, initial=start, dynamic_ncols=True,
                                       file=sys.stderr) as progress:  # fmt: skip
        yield progress


def _report(progress, iteration: int, loss: float, lr: float, gammas: dict[str, float],
            log_every: int) -> None:  # fmt: skip
    status = {"loss": f"{loss:.3f}", "lr": f"{lr:.2e}"}
    status.update({f"{name}_gamma": f"{gamma:.3f}" for name, gamma in gammas.items()})
    if progress is not None:
        progress.set_postfix(status, refresh=False)
        progress.update(1)
    if iteration % log_every == 0:
        log.info("iter %d %s", iteration, " ".join(f"{k} {v}" for k, v in status.items()))


def _draw_pictures(model: SegmentationModel, val_set: Dataset, classes: tuple[str, ...], out: Path,
                   device: torch.device, dataset: str) -> None:  # fmt: skip
    try:
        from examples.visualize_attention import (
            draw_attention,
            draw_predictions,
            points_on_classes,
        )
    except ImportError as error:  # matplotlib comes with the examples extra
        log.info("no pictures: %s", error)
        return
    # The first (up to) four validation images; real datasets' differ in size.
    samples = [val_set[i] for i in range(min(4, len(val_set)))]
    images = [image.to(device) for image, _ in samples]
    labels = [label for _, label in samples]
    colours = dataset_palette(dataset, len(classes))
    draw_predictions(model, images, labels, classes, out / "predictions.png", colours)
    if not isinstance(model, DANet):
        log.info("wrote %s (attention.png is drawn for DANet's PAM only)", out / "predictions.png")
        return
    # Query points on the context classes first (vehicles in the synthetic scenes), then others.
    context = [classes.index(name) for name in CONTEXT_CLASSES if name in classes]
    order = context + [c for c in range(len(classes)) if c not in context]
    draw_attention(model, images[0], out / "attention.png", points_on_classes(labels[0], order))
    log.info("wrote %s and %s", out / "predictions.png", out / "attention.png")


def main(argv: list[str] | None = None) -> int:
    """Run :func:`train` from the command line; return the exit status.

    Mistakes (a run already in ``--out``, no readable checkpoint, missing data) are one
    line on stderr and status 2; a signal is status 128 + its number, after the log line
    that says which checkpoint holds the run.
    """
    args = parse_args(argv)
    try:
        train(args)
    except Interrupted as stop:
        print(f"train.py: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except (RunError, CheckpointError, FileNotFoundError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

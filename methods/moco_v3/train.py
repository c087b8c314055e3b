"""Train MoCo-v3 with any schedule: ``python -m methods.moco_v3.train --schedule tspipe --stages 2``.

Presets live in ``experiments/moco_v3.py`` (``--preset cpu`` by default); any config field can be
overridden as ``key=value``. With more than one stage the command relaunches itself with one
process per stage (``core.launch``); under ``torchrun`` it joins the job instead. Run folder,
log, evaluation (weighted kNN on the backbone's class token) and result row are those of every
trainer (``methods.common.trainer``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import timm
import torch
from torch import nn

from core.runtime import prepare_models
from experiments.moco_v3 import PRESETS
from methods.common.augment import ViewConfig, plain
from methods.common.config import ConfigError
from methods.common.data import BatchOrder, check_dataset, load_images
from methods.common.knn import evaluate_features
from methods.common.optim import OPTIMIZERS, optimizer_factory, warmup_cosine
from methods.common.trainer import Method, Setup, TrainConfig, main
from methods.common.vit import VIT_MODELS
from methods.moco_v3.moco_v3 import MocoV3Task


@dataclass(frozen=True)
class MocoV3Config(TrainConfig):
    """A MoCo-v3 run (pipeline fields in :class:`TrainConfig`).

    Attributes:
        vit: timm ViT name or ``vit_small``/``vit_base``/``vit_large``; the other fields
            override its shape.
        image: input side in pixels.
        patch: patch size (0: the model's, 16).
        embed_dim: token width (0: the model's).
        depth: transformer blocks (0: the model's).
        heads: attention heads (0: the model's); must divide ``embed_dim``.
        half_blocks: attention and MLP halves of each block as separate pipeline units.
        frozen_patch_projection: keep the patch projection at its random init (MoCo-v3).
        proj_hidden, proj_dim, pred_hidden: projector (3 layers) and predictor (2 layers) sizes.
        temperature: InfoNCE temperature (MoCo-v3: 0.2 for ViT).
        min_scale, blur_p: smallest crop area and blur probability of the two views (the other
            augmentations as ``methods.common.augment.ViewConfig``; defaults as BYOL's).
        dataset: ``fashion_mnist``, ``digits`` (tests) or ``synthetic`` (throughput only).
        data_dir: folder with the Fashion-MNIST IDX files; empty: ``$DATA_DIR`` then Debian's.
        train_subset: train on this many images (0: all).
        batch: images per mini-batch (each gives two views); the keys of all of them are the
            negatives of every query.
        optimizer: ``adamw`` (MoCo-v3's ViT recipe), ``lars`` or ``sgd``.
        lr: learning rate after warm-up (MoCo-v3: 1.5e-4 x batch / 256).
        weight_decay: on weights (not biases and norms); MoCo-v3: 0.1.
        warmup_steps: linear warm-up before the cosine decay.
        base_momentum: EMA momentum at step 0 (MoCo-v3: 0.99, rising to 1 on a cosine).
        knn_k, knn_t: weighted kNN evaluation.
        eval_train_subset: training images used as the kNN memory (0: all).
        probe: also fit a linear probe.
    """

    vit: str = "vit_tiny_patch16_224"
    image: int = 32
    patch: int = 4
    embed_dim: int = 96
    depth: int = 4
    heads: int = 3
    half_blocks: bool = False
    frozen_patch_projection: bool = True
    proj_hidden: int = 512
    proj_dim: int = 128
    pred_hidden: int = 512
    temperature: float = 0.2
    min_scale: float = 0.2
    blur_p: float = 0.5
    dataset: str = "fashion_mnist"
    data_dir: str = ""
    train_subset: int = 0
    batch: int = 128
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    base_momentum: float = 0.99
    knn_k: int = 200
    knn_t: float = 0.1
    eval_train_subset: int = 10000
    probe: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not timm.is_model(VIT_MODELS.get(self.vit, self.vit)):
            raise ValueError(f"vit {self.vit!r} is not a timm model; use vit_small, vit_base or vit_large")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        ViewConfig(size=self.image, min_scale=self.min_scale, blur_p=self.blur_p)  # validates both
        if not 0.0 <= self.base_momentum <= 1.0:
            raise ValueError(f"base_momentum must lie in [0, 1], got {self.base_momentum}")
        for name in ("patch", "embed_dim", "depth", "heads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: the model's), got {getattr(self, name)}")
        if self.patch and self.image % self.patch:
            raise ValueError(f"image {self.image} is not a multiple of patch {self.patch}; change either")
        if self.embed_dim and self.heads and self.embed_dim % self.heads:
            raise ValueError(f"heads {self.heads} must divide embed_dim {self.embed_dim}")
        pipeline = self.pipeline()
        shares = self.microbatches * pipeline.pieces * (self.stages if self.schedule == "ddp" else 1)
        if self.batch < 2 * shares:
            raise ValueError(
                f"batch {self.batch} leaves fewer than 2 images per micro-batch piece ({shares} pieces); "
                "the projector's BatchNorm needs 2: raise batch or lower microbatches/backward_pieces"
            )


def check(config: MocoV3Config) -> None:
    """Fail before any process starts when the data is missing."""
    try:
        check_dataset(config.dataset, config.data_dir or None)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def model_name(config: MocoV3Config) -> str:
    """The row's model name, e.g. ``vit_base-p16-224px-halves`` or ``vit-d96x4h3-p4-32px``."""
    custom = config.embed_dim or config.depth or config.heads
    base = f"vit-d{config.embed_dim}x{config.depth}h{config.heads}" if custom else config.vit
    patch = f"-p{config.patch}" if config.patch else ""
    return f"{base}{patch}-{config.image}px{'-halves' if config.half_blocks else ''}"


def task_for(config: MocoV3Config, total_steps: int) -> MocoV3Task:
    return MocoV3Task(
        vit=config.vit,
        image=config.image,
        patch=config.patch or None,
        embed_dim=config.embed_dim or None,
        depth=config.depth or None,
        heads=config.heads or None,
        half_blocks=config.half_blocks,
        frozen_patch_projection=config.frozen_patch_projection,
        proj_hidden=config.proj_hidden,
        proj_dim=config.proj_dim,
        pred_hidden=config.pred_hidden,
        temperature=config.temperature,
        base_momentum=config.base_momentum,
        total_steps=total_steps,
        seed=config.seed,
        views=None
        if config.dataset == "synthetic"
        else ViewConfig(size=config.image, min_scale=config.min_scale, blur_p=config.blur_p),
    )


def setup(config: MocoV3Config) -> Setup:
    data = load_images(
        config.dataset, config.data_dir or None, config.train_subset, config.seed, config.image, config.batch
    )
    order = BatchOrder(len(data.train_images), config.batch, config.seed)
    steps = config.steps or config.epochs * order.steps_per_epoch
    task = task_for(config, steps)

    def batches(start: int, count: int):
        for idx in order.iterate(start, count):
            yield data.prepare(data.train_images[idx], config.image), data.train_labels[idx]

    def evaluate(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
        student, _ = prepare_models(task)
        model = nn.Sequential(*student)
        model.load_state_dict(state["student"])
        encoder = MocoV3Task.encoder(list(model))
        memory = config.eval_train_subset or len(data.train_images)
        prepare = lambda x: task._channels(plain(data.prepare(x, config.image)))  # noqa: E731
        return evaluate_features(
            encoder,
            (prepare(data.train_images[:memory]), data.train_labels[:memory]),
            (prepare(data.test_images), data.test_labels),
            config.knn_k,
            config.knn_t,
            config.probe,
        )

    return Setup(
        task=task,
        batches=batches,
        optimizer=optimizer_factory(config.optimizer, config.lr, config.weight_decay),
        scheduler=warmup_cosine(config.warmup_steps, steps),
        steps=steps,
        steps_per_epoch=order.steps_per_epoch,
        samples_per_step=config.batch,
        model=model_name(config),
        evaluate=None if data.synthetic else evaluate,
        metric=None if data.synthetic else "knn_top1",
    )


METHOD = Method(
    name="moco_v3",
    config_cls=MocoV3Config,
    presets=PRESETS,
    default_preset="cpu",
    check=check,
    setup=setup,
    make_task=lambda config: task_for(config, 1),
)

if __name__ == "__main__":
    sys.exit(main(METHOD))

"""Train BYOL with any schedule: ``python -m methods.byol.train --schedule tspipe --stages 2``.

Presets live in ``experiments/byol.py`` (``--preset cpu`` by default); any config field can be
overridden as ``key=value``. With more than one stage the command relaunches itself with one
process per stage (``core.launch``); under ``torchrun`` it joins the job instead.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn

from core.runtime import prepare_models
from experiments.byol import PRESETS
from methods.byol.byol import ByolTask
from methods.common.augment import ViewConfig, plain
from methods.common.config import ConfigError
from methods.common.data import BatchOrder, check_dataset, load_images
from methods.common.knn import evaluate_features
from methods.common.optim import OPTIMIZERS, optimizer_factory, warmup_cosine
from methods.common.trainer import Method, Setup, TrainConfig, main


@dataclass(frozen=True)
class ByolConfig(TrainConfig):
    """A BYOL run (pipeline fields in :class:`TrainConfig`).

    Attributes:
        depth: ResNet depth (18 or 50 for the presets).
        width: channels of the first ResNet stage (64 is the standard network).
        cifar_stem: 3x3 stride-1 stem without max-pool, for small images.
        image: input side in pixels.
        proj_hidden, proj_dim, pred_hidden: projector and predictor sizes.
        dataset: ``fashion_mnist``, ``digits`` (tests) or ``synthetic`` (throughput only).
        data_dir: folder with the Fashion-MNIST IDX files; empty: ``$DATA_DIR`` then Debian's.
        train_subset: train on this many images (0: all).
        batch: images per mini-batch (each gives two views).
        optimizer: ``lars``, ``sgd`` or ``adamw``.
        lr: learning rate after warm-up (BYOL scales 0.2 x batch / 256 for LARS).
        weight_decay: on weights (not biases and norms).
        warmup_steps: linear warm-up before the cosine decay.
        base_momentum: EMA momentum at step 0 (rises to 1 on a cosine).
        knn_k, knn_t: weighted kNN evaluation.
        eval_train_subset: training images used as the kNN memory (0: all).
        probe: also fit a linear probe.
    """

    depth: int = 18
    width: int = 16
    cifar_stem: bool = True
    image: int = 32
    proj_hidden: int = 512
    proj_dim: int = 128
    pred_hidden: int = 512
    dataset: str = "fashion_mnist"
    data_dir: str = ""
    train_subset: int = 0
    batch: int = 128
    optimizer: str = "lars"
    lr: float = 0.6
    weight_decay: float = 1.5e-6
    warmup_steps: int = 50
    base_momentum: float = 0.996
    knn_k: int = 200
    knn_t: float = 0.1
    eval_train_subset: int = 10000
    probe: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        if not 0.0 <= self.base_momentum <= 1.0:
            raise ValueError(f"base_momentum must lie in [0, 1], got {self.base_momentum}")
        if self.batch < self.microbatches * max(self.stages if self.schedule == "ddp" else 1, 1):
            raise ValueError(f"batch {self.batch} is smaller than the micro-batches it is split into")
        if self.image < 8:
            raise ValueError(f"image must be >= 8 pixels, got {self.image}")


def check(config: ByolConfig) -> None:
    """Fail before any process starts when the data is missing."""
    try:
        check_dataset(config.dataset, config.data_dir or None)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def task_for(config: ByolConfig, total_steps: int) -> ByolTask:
    return ByolTask(
        depth=config.depth,
        width=config.width,
        cifar_stem=config.cifar_stem,
        proj_hidden=config.proj_hidden,
        proj_dim=config.proj_dim,
        pred_hidden=config.pred_hidden,
        base_momentum=config.base_momentum,
        total_steps=total_steps,
        seed=config.seed,
        views=None if config.dataset == "synthetic" else ViewConfig(size=config.image),
    )


def setup(config: ByolConfig) -> Setup:
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
        encoder = ByolTask.encoder(list(model))
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

    model = f"resnet{config.depth}w{config.width}-{config.image}px"
    return Setup(
        task=task,
        batches=batches,
        optimizer=optimizer_factory(config.optimizer, config.lr, config.weight_decay),
        scheduler=warmup_cosine(config.warmup_steps, steps),
        steps=steps,
        steps_per_epoch=order.steps_per_epoch,
        samples_per_step=config.batch,
        model=model,
        evaluate=None if data.synthetic else evaluate,
        metric=None if data.synthetic else "knn_top1",
    )


METHOD = Method(
    name="byol",
    config_cls=ByolConfig,
    presets=PRESETS,
    default_preset="cpu",
    check=check,
    setup=setup,
    make_task=lambda config: task_for(config, 1),
)

if __name__ == "__main__":
    sys.exit(main(METHOD))

"""What BYOL and MoCo-v3 share: two augmented views, an EMA teacher mirroring the student minus
its predictor, the run config of their data and optimiser, and the run setup with kNN evaluation."""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from core.config import Config, PipelineConfig, RunConfig
from core.momentum import TeacherRule
from core.overrides import ConfigError
from core.runtime import prepare_models
from core.task import Task
from methods.common.augment import TwoViews, ViewConfig, plain
from methods.common.data import BatchOrder, check_dataset, load_images
from methods.common.knn import evaluate_features
from methods.common.optim import OPTIMIZERS, optimizer_factory, warmup_cosine
from methods.spec import Setup


class TwoViewTask(Task):
    """A self-supervised task with two views per image and an EMA teacher that is a copy of the
    student without its last block (the predictor).

    Args:
        base_momentum: EMA momentum at step 0, rising to 1 on a cosine over ``total_steps``.
        total_steps: training length, for the momentum schedule.
        seed: weight initialisation and augmentation seed.
        views: a :class:`ViewConfig` for real images, or None for synthetic inputs (the second
            view is a flip of the first: no augmentation cost in throughput runs).
        in_channels: image channels the model takes (gray images are repeated to match).
    """

    views = 2
    predictor_blocks = 1

    def __init__(
        self,
        base_momentum: float,
        total_steps: int,
        seed: int = 0,
        views: ViewConfig | None = None,
        in_channels: int = 3,
    ) -> None:
        self.seed = seed
        self.in_channels = in_channels
        self.augment = TwoViews(views) if views is not None else None
        self.teacher_rule = TeacherRule.ema(base_momentum, total_steps)

    def build_teacher(self, student):
        return [copy.deepcopy(b) for b in student[:-1]]

    def channels(self, x: torch.Tensor) -> torch.Tensor:
        """Images with the channel count the model takes (gray repeated, no copy)."""
        return x.expand(-1, self.in_channels, -1, -1) if x.shape[1] != self.in_channels else x

    def split_inputs(self, batch, step):
        images = batch[0]
        views = (
            [images, images.flip(3)] if self.augment is None else list(self.augment(images, self.seed, step))
        )
        views = [self.channels(v) for v in views]
        return views, views

    def loss_context(self, batch, step):
        return batch[0].shape[0]

    @staticmethod
    @abstractmethod
    def encoder(student_blocks: list[nn.Module]) -> nn.Module:
        """The representation kNN evaluates, built from the student's blocks."""


@dataclass(frozen=True)
class SslConfig:
    """Data, optimiser and evaluation fields of a two-view self-supervised run.

    Attributes:
        image: input side in pixels.
        min_scale, blur_p: smallest crop area and blur probability of the two views (the other
            augmentations as ``methods.common.augment.ViewConfig``).
        dataset: ``fashion_mnist``, ``digits`` (tests) or ``synthetic`` (throughput only).
        data_dir: folder with the Fashion-MNIST IDX files; empty: ``$DATA_DIR`` then Debian's.
        train_subset: train on this many images (0: all).
        batch: images per mini-batch (each gives two views).
        optimizer: ``lars``, ``sgd`` or ``adamw``.
        lr: learning rate after warm-up.
        weight_decay: on weights (not biases and norms).
        warmup_steps: linear warm-up before the cosine decay.
        base_momentum: EMA momentum at step 0 (rises to 1 on a cosine).
        knn_k, knn_t: weighted kNN evaluation.
        eval_train_subset: training images used as the kNN memory (0: all).
        probe: also fit a linear probe.
    """

    image: int = 32
    min_scale: float = 0.2
    blur_p: float = 0.5
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
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        if not 0.0 <= self.base_momentum <= 1.0:
            raise ValueError(f"base_momentum must lie in [0, 1], got {self.base_momentum}")
        if self.image < 8:
            raise ValueError(f"image must be >= 8 pixels, got {self.image}")
        self.view_config()  # validates min_scale and blur_p

    def check_with(self, pipeline: PipelineConfig, run: RunConfig) -> None:
        """Every micro-batch piece keeps at least 2 images (BatchNorm needs 2)."""
        pieces = pipeline.microbatches * pipeline.pieces * pipeline.replicas
        if self.batch < 2 * pieces:
            raise ValueError(
                f"batch {self.batch} leaves fewer than 2 images per micro-batch piece ({pieces} pieces); "
                "BatchNorm needs 2: raise batch or lower microbatches/backward_pieces"
            )

    def view_config(self) -> ViewConfig | None:
        """The augmentation, None for synthetic images."""
        if self.dataset == "synthetic":
            return None
        return ViewConfig(size=self.image, min_scale=self.min_scale, blur_p=self.blur_p)


def check(config: Config) -> None:
    """Fail before any process starts when the data is missing."""
    try:
        check_dataset(config.method.dataset, config.method.data_dir or None)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def setup(config: Config, task_for: Callable[[Config, int], TwoViewTask], model: str) -> Setup:
    """The run of a two-view task: data order, batches, optimiser, schedule and kNN evaluation
    of ``task.encoder`` (the student's representation) on the test set."""
    method, run = config.method, config.run
    data = load_images(
        method.dataset, method.data_dir or None, method.train_subset, run.seed, method.image, method.batch
    )
    order = BatchOrder(len(data.train_images), method.batch, run.seed)
    steps = run.steps or run.epochs * order.steps_per_epoch
    task = task_for(config, steps)

    def batches(start: int, count: int):
        for idx in order.iterate(start, count):
            yield data.prepare(data.train_images[idx], method.image), data.train_labels[idx]

    def evaluate(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
        student, _ = prepare_models(task)
        model_ = nn.Sequential(*student)
        model_.load_state_dict(state["student"])
        memory = method.eval_train_subset or len(data.train_images)

        def prepare(x: torch.Tensor) -> torch.Tensor:
            return task.channels(plain(data.prepare(x, method.image)))

        return evaluate_features(
            task.encoder(list(model_)),
            (prepare(data.train_images[:memory]), data.train_labels[:memory]),
            (prepare(data.test_images), data.test_labels),
            method.knn_k,
            method.knn_t,
            method.probe,
        )

    return Setup(
        task=task,
        batches=batches,
        optimizer=optimizer_factory(method.optimizer, method.lr, method.weight_decay),
        scheduler=warmup_cosine(method.warmup_steps, steps),
        steps=steps,
        steps_per_epoch=order.steps_per_epoch,
        samples_per_step=method.batch,
        model=model,
        evaluate=None if data.synthetic else evaluate,
        metric=None if data.synthetic else "knn_top1",
        synthetic_data=data.synthetic,
    )

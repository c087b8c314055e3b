"""Train a KD student with any schedule: ``python -m methods.soft_target.train --schedule tspipe --stages 2``.

Presets live in ``experiments/soft_target.py`` (``--preset cpu`` by default); any config field can
be overridden as ``key=value``. The teacher is a checkpoint made by ``make teacher-kd``
(``python -m methods.soft_target.teacher``); a run without one stops before starting and says
which command makes it. With more than one stage the command relaunches itself with one process
per stage (``core.launch``); under ``torchrun`` it joins the job instead.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.config import PipelineConfig
from core.partition import check_balance, plan_partition, uniform_balance
from experiments.soft_target import PRESETS
from methods.common.config import ConfigError
from methods.common.data import BatchOrder, check_dataset, load_images
from methods.common.optim import OPTIMIZERS, optimizer_factory, warmup_cosine
from methods.common.trainer import Method, Setup, TrainConfig, main
from methods.soft_target.kd import SoftTargetTask
from methods.soft_target.models import Arch, block_macs, default_teacher_path, load_teacher
from methods.soft_target.teacher import teacher_command, top1


@dataclass(frozen=True)
class SoftTargetConfig(TrainConfig):
    """A soft-target KD run (pipeline fields in :class:`TrainConfig`).

    Attributes:
        teacher: teacher model name (``resnet18w32``, ``resnet152``, ``vit_large``, ...).
        student: student model name (``resnet18w8``, ``resnet50``, ...), trained from scratch.
        cifar_stem: ResNets: 3x3 stride-1 stem without max-pool, for small images.
        image: input side in pixels.
        in_channels: model input channels (gray images are repeated to match).
        classes: class logits of both networks.
        half_blocks: ViT teacher: one pipeline unit per attention or MLP half.
        teacher_checkpoint: the trained teacher; empty: the path ``make teacher-kd`` writes for
            this teacher and dataset; ``random``: untrained weights (throughput runs only). A
            torchvision ResNet or timm ViT state dict (real weights) is accepted too.
        teacher_balance: teacher blocks per stage, comma-separated; ``auto``: balanced on its own
            against the student's stages by estimated compute; ``uniform``: by block count.
        alpha: weight of the soft-target term (0: cross-entropy alone, no teacher needed).
        temperature: softening temperature T (the soft term is scaled by T^2).
        dataset: ``fashion_mnist``, ``digits`` (tests) or ``synthetic`` (throughput only).
        data_dir: folder with the Fashion-MNIST IDX files; empty: ``$DATA_DIR`` then Debian's.
        train_subset: train on this many images (0: all).
        batch: images per mini-batch.
        optimizer: ``sgd``, ``adamw`` or ``lars``.
        lr: learning rate after warm-up (cosine decay to 0 afterwards).
        weight_decay: on weights (not biases and norms).
        warmup_steps: linear warm-up steps.
    """

    teacher: str = "resnet18w32"
    student: str = "resnet18w8"
    cifar_stem: bool = True
    image: int = 16
    in_channels: int = 1
    classes: int = 10
    half_blocks: bool = False
    teacher_checkpoint: str = ""
    teacher_balance: str = "auto"
    alpha: float = 0.9
    temperature: float = 4.0
    dataset: str = "fashion_mnist"
    data_dir: str = ""
    train_subset: int = 0
    batch: int = 64
    optimizer: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 5e-4
    warmup_steps: int = 50

    def __post_init__(self) -> None:
        self.student_arch()
        self.teacher_arch()
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr < 0 or self.weight_decay < 0:
            raise ValueError(f"lr and weight_decay must be >= 0, got {self.lr} and {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.batch < self.microbatches * max(self.stages if self.schedule == "ddp" else 1, 1):
            raise ValueError(f"batch {self.batch} is smaller than the micro-batches it is split into")
        if self.teacher_balance not in ("auto", "uniform"):
            try:
                [int(x) for x in self.teacher_balance.split(",")]
            except ValueError:
                raise ValueError(
                    f"teacher_balance must be auto, uniform or blocks per stage like 5,5; got {self.teacher_balance!r}"
                ) from None
        if self.dataset == "synthetic" and self.alpha > 0 and not self.teacher_checkpoint:
            raise ValueError(
                "synthetic images have no trained teacher: set teacher_checkpoint=random (throughput runs) "
                "or teacher_checkpoint=PATH"
            )
        if self.teacher_checkpoint == "random" and self.dataset != "synthetic" and self.alpha > 0:
            raise ValueError(
                "teacher_checkpoint=random distils an untrained teacher: only for throughput runs "
                "(dataset=synthetic); make a trained one with `make teacher-kd`"
            )
        super().__post_init__()  # validates the pipeline part, teacher balance included

    def student_arch(self) -> Arch:
        """The student's architecture."""
        return Arch(self.student, self.image, self.in_channels, self.classes, self.cifar_stem)

    def teacher_arch(self) -> Arch:
        """The teacher's architecture (what its checkpoint must hold)."""
        return Arch(
            self.teacher, self.image, self.in_channels, self.classes, self.cifar_stem, self.half_blocks
        )

    def teacher_path(self) -> Path | None:
        """The teacher checkpoint this run loads; None for a random or unused teacher."""
        if self.alpha == 0 or self.teacher_checkpoint == "random":
            return None
        if self.teacher_checkpoint:
            return Path(self.teacher_checkpoint)
        return default_teacher_path(self.teacher_arch(), self.dataset)

    def pipeline(self) -> PipelineConfig:
        """The pipeline part of the run, with the teacher's own balance."""
        base = super().pipeline()
        return dataclasses.replace(base, teacher_balance=self._teacher_balance(base))

    def _teacher_balance(self, base: PipelineConfig) -> tuple[int, ...] | None:
        if self.alpha == 0 or self.stages == 1 or self.schedule == "ddp" or self.teacher_balance == "uniform":
            return None  # identity stand-in, one stage, or replicas: nothing to balance
        student = block_macs(self.student_arch())
        teacher = block_macs(self.teacher_arch())
        if self.teacher_balance != "auto":
            explicit = [int(x) for x in self.teacher_balance.split(",")]
            check_balance(explicit, len(teacher), self.stages, "teacher")
            return tuple(explicit)
        balance = (
            list(base.balance) if base.balance else uniform_balance(len(student), self.stages, "student")
        )
        # a student block costs about 3 forwards (forward + backward); the teacher only forwards
        plan = plan_partition(self.stages, [3 * c for c in student], teacher, "frozen", balance=balance)
        return plan.teacher


def check(config: SoftTargetConfig) -> None:
    """Fail before any process starts when the data or the teacher checkpoint is missing or wrong."""
    try:
        check_dataset(config.dataset, config.data_dir or None)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    path = config.teacher_path()
    if path is not None:
        load_teacher(
            path, config.teacher_arch(), teacher_command(config.teacher_arch(), config.dataset, path)
        )


def task_for(config: SoftTargetConfig) -> SoftTargetTask:
    """The KD task of a config, its teacher's weights loaded (checked) from the checkpoint."""
    path = config.teacher_path()
    state = None
    if path is not None:
        command = teacher_command(config.teacher_arch(), config.dataset, path)
        state = load_teacher(path, config.teacher_arch(), command)["state_dict"]
    return SoftTargetTask(
        config.student_arch(), config.teacher_arch(), state, config.alpha, config.temperature, config.seed
    )


def setup(config: SoftTargetConfig) -> Setup:
    """The run: task (teacher loaded), data batches, optimizer, schedule, top-1 evaluation.

    Raises:
        ConfigError: if the teacher checkpoint is missing or does not fit.
        DataNotFound: if the dataset is missing.
    """
    data = load_images(
        config.dataset, config.data_dir or None, config.train_subset, config.seed, config.image, config.batch
    )
    order = BatchOrder(len(data.train_images), config.batch, config.seed)
    steps = config.steps or config.epochs * order.steps_per_epoch
    task = task_for(config)

    def batches(start: int, count: int):
        for idx in order.iterate(start, count):
            yield data.prepare(data.train_images[idx], config.image), data.train_labels[idx]

    teacher_top1: dict[str, float] = {}
    device = torch.device("cuda" if config.device == "cuda" else "cpu")

    def evaluate(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
        images = task.channels(data.prepare(data.test_images, config.image))
        student = nn.Sequential(*task.build_student())  # plain BatchNorm: same state dict keys
        student.load_state_dict(state["student"])
        metrics = {"top1": top1(student.to(device), images, data.test_labels)}
        if task.uses_teacher:
            if not teacher_top1:  # the teacher is frozen: once is enough
                teacher = nn.Sequential(*task.build_teacher(list(student)))
                teacher.load_state_dict(state["teacher"])
                teacher_top1["value"] = top1(teacher.to(device), images, data.test_labels)
            metrics["teacher_top1"] = teacher_top1["value"]
        return metrics

    model = f"{config.teacher}-to-{config.student}-{config.image}px"
    return Setup(
        task=task,
        batches=batches,
        optimizer=optimizer_factory(config.optimizer, config.lr, config.weight_decay),
        scheduler=warmup_cosine(config.warmup_steps, steps),
        steps=steps,
        steps_per_epoch=order.steps_per_epoch,
        samples_per_step=config.batch,
        model=model if config.alpha > 0 else f"{config.student}-{config.image}px",
        evaluate=None if data.synthetic else evaluate,
        metric=None if data.synthetic else "top1",
    )


METHOD = Method(
    name="soft_target",
    config_cls=SoftTargetConfig,
    presets=PRESETS,
    default_preset="cpu",
    check=check,
    setup=setup,
)

if __name__ == "__main__":
    sys.exit(main(METHOD))

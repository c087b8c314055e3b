"""The configs of a soft-target KD run (the ``method`` section) and of its teacher's training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.config import PipelineConfig, RunConfig
from methods.common.optim import OPTIMIZERS
from methods.soft_target.models import Arch, default_teacher_path


@dataclass(frozen=True)
class SoftTargetConfig:
    """A soft-target KD run's models, data, loss and optimiser (the ``method`` section).

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

    def check_with(self, pipeline: PipelineConfig, run: RunConfig) -> None:
        """The mini-batch must fill every micro-batch of every replica."""
        if self.batch < pipeline.microbatches * pipeline.replicas:
            raise ValueError(f"batch {self.batch} is smaller than the micro-batches it is split into")

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


@dataclass(frozen=True)
class TeacherConfig:
    """A teacher training run.

    Attributes:
        teacher: model name (``resnet18w32``, ...; see ``methods.soft_target.models``).
        image: input side in pixels.
        in_channels: input channels (gray images are repeated to match).
        classes: output logits.
        cifar_stem: ResNet: 3x3 stride-1 stem without max-pool, for small images.
        half_blocks: ViT: one unit per attention or MLP half (the KD run's teacher layout).
        dataset: ``fashion_mnist`` or ``digits`` (tests).
        data_dir: folder with the Fashion-MNIST IDX files; empty: ``$DATA_DIR`` then Debian's.
        train_subset: train on this many images (0: all).
        batch: images per step.
        epochs: passes over the data (ignored when ``steps`` > 0).
        steps: optimizer steps; 0: ``epochs`` worth.
        optimizer: ``sgd``, ``adamw`` or ``lars``.
        lr: learning rate after warm-up (cosine decay to 0 afterwards).
        weight_decay: on weights (not biases and norms).
        warmup_steps: linear warm-up steps.
        seed: weights and data order.
        threads: torch threads of the command-line run (0: torch's default).
        log_every: progress line every this many steps.
        out: checkpoint path; empty: the default path KD runs look in.
    """

    teacher: str = "resnet18w32"
    image: int = 16
    in_channels: int = 1
    classes: int = 10
    cifar_stem: bool = True
    half_blocks: bool = False
    dataset: str = "fashion_mnist"
    data_dir: str = ""
    train_subset: int = 0
    batch: int = 128
    epochs: int = 1
    steps: int = 0
    optimizer: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 5e-4
    warmup_steps: int = 40
    seed: int = 0
    threads: int = 0
    log_every: int = 50
    out: str = ""

    def __post_init__(self) -> None:
        self.arch()  # validates the model name, image, channels, classes
        if self.dataset not in ("fashion_mnist", "digits"):
            raise ValueError(
                f"a teacher trains on real data: dataset must be fashion_mnist or digits, got {self.dataset!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr < 0 or self.weight_decay < 0:
            raise ValueError(f"lr and weight_decay must be >= 0, got {self.lr} and {self.weight_decay}")
        for name in ("batch", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("epochs", "steps", "warmup_steps", "threads", "train_subset"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.epochs == 0 and self.steps == 0:
            raise ValueError("set epochs or steps above 0")

    def arch(self) -> Arch:
        """The teacher's architecture."""
        return Arch(
            self.teacher, self.image, self.in_channels, self.classes, self.cifar_stem, self.half_blocks
        )

    def path(self) -> Path:
        """Where the checkpoint goes."""
        return Path(self.out) if self.out else default_teacher_path(self.arch(), self.dataset)

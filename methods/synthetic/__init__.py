"""A synthetic teacher/student pair for measuring the engine itself (``make bench-engine``).

Teacher and student are the same CNN of equal blocks (3x3 convolutions, BatchNorm, ReLU; as many
channels in as out, on synthetic inputs, so every block costs the same and stages balance
exactly), so a teacher forward costs about a student forward; the teacher is an EMA of the
student (two views, BYOL-style loss), so ``tspipe`` runs it one step stale. Throughput only:
there is nothing to evaluate.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.config import Config, RunConfig
from core.momentum import TeacherRule
from core.task import Task, unit_slices
from methods.spec import MethodSpec, Setup


def conv_block(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Head(nn.Module):
    def __init__(self, channels: int, out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class SyntheticPair(Task):
    """A CNN student and its EMA teacher on two views of synthetic images."""

    views = 2

    def __init__(self, blocks: int = 6, channels: int = 32, steps: int = 100) -> None:
        self.blocks, self.channels = blocks, channels
        self.teacher_rule = TeacherRule.ema(0.99, steps)

    def build_student(self) -> list[nn.Module]:
        torch.manual_seed(0)
        body = [conv_block(self.channels, self.channels) for _ in range(self.blocks - 1)]
        return [*body, nn.Sequential(conv_block(self.channels, self.channels), Head(self.channels, 64))]

    def build_teacher(self, student):
        return [copy.deepcopy(b) for b in student]

    def split_inputs(self, batch, step):
        g = torch.Generator().manual_seed(step)
        flip = batch.flip(3)
        noise = 0.05 * torch.randn(batch.shape, generator=g)
        return [batch + noise, flip - noise], [batch + noise, flip - noise]

    def loss_context(self, batch, step):
        return batch.shape[0]

    def _terms(self, p, z):
        return (2 - 2 * (F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(dim=1)).sum()

    def loss(self, student, teacher, context):
        return {"loss": (self._terms(student[0], teacher[1]) + self._terms(student[1], teacher[0])) / context}

    def microbatch_loss(self, view, microbatch, microbatches, student, teacher, context):
        index = unit_slices(context, microbatches)[microbatch]
        return self._terms(student, teacher[1 - view][index]) / context


@dataclass(frozen=True)
class SyntheticConfig:
    """The synthetic pair and its data.

    Attributes:
        batch: images per mini-batch (two views each).
        image: side of the synthetic images.
        channels: channels of every block.
        blocks: blocks of the CNN.
        lr: SGD learning rate (momentum 0.9).
    """

    batch: int = 64
    image: int = 16
    channels: int = 32
    blocks: int = 6
    lr: float = 0.01

    def __post_init__(self) -> None:
        for name in ("batch", "image", "channels", "blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _sgd(lr: float):
    def build(named):
        return torch.optim.SGD([p for _, p in named], lr=lr, momentum=0.9)

    return build


def make_task(config: Config) -> SyntheticPair:
    return SyntheticPair(config.method.blocks, config.method.channels)


def setup(config: Config) -> Setup:
    m = config.method
    data = torch.randn(m.batch, m.channels, m.image, m.image, generator=torch.Generator().manual_seed(1))

    def batches(start: int, count: int):
        return [data] * count

    return Setup(
        task=make_task(config),
        batches=batches,
        optimizer=_sgd(m.lr),
        scheduler=None,
        steps=config.run.steps or config.run.epochs,
        steps_per_epoch=1,
        samples_per_step=m.batch,
        model=f"synthetic-cnn{m.blocks}x{m.channels}@{m.image}",
        synthetic_data=True,
    )


BENCH = Config(method=SyntheticConfig(), run=RunConfig(threads=1))
METHOD = MethodSpec(
    name="synthetic",
    title="Engine (synthetic CNN pair)",
    config_cls=SyntheticConfig,
    presets={
        "bench": BENCH.derive(pipeline=dict(backward_pieces=1)),
        "tiny": BENCH.derive(method=dict(batch=16, image=8, channels=8, blocks=4), run=dict(steps=3)),
    },
    default_preset="bench",
    setup=setup,
    make_task=make_task,
    bench_command="make bench-engine",
    bench_presets={"cpu": "bench"},
)

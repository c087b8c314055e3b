"""`make bench-engine`: every schedule on a synthetic teacher/student pair of small CNNs (CPU).

Teacher and student are the same 6-block CNN (3x3 convolutions, BatchNorm, ReLU; 32 channels
in and out of every block, on synthetic 32-channel 16x16 inputs, so all blocks cost the same and
2 stages balance exactly), so a teacher forward costs about a student forward; the teacher is an
EMA of the student (two views, BYOL-style loss), so ``tspipe`` runs it one step stale.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.momentum import TeacherRule
from core.task import Task, unit_slices
from experiments.benchmark import BenchSpec, Workload, run_benchmark


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


def build(options: dict) -> Workload:
    """Workload for experiments.benchmark: options ``batch``, ``image``, ``channels``, ``blocks``."""
    batch, image = options["batch"], options["image"]
    task = SyntheticPair(options["blocks"], options["channels"])
    data = torch.randn(batch, options["channels"], image, image, generator=torch.Generator().manual_seed(1))

    def batches(steps: int):
        return [data] * steps

    def optimizer(named):
        return torch.optim.SGD([p for _, p in named], lr=0.01, momentum=0.9)

    return Workload(task, batches, optimizer)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_engine", description=__doc__)
    parser.add_argument("--batch", type=int, default=64, help="images per mini-batch (two views each)")
    parser.add_argument("--image", type=int, default=16)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--microbatches", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="repeats of every run; the median counts")
    parser.add_argument("--pieces", type=int, default=1, help="backward pieces (tspipe default on GPUs: 2)")
    parser.add_argument("--out", default="results/engine")
    args = parser.parse_args(argv)
    spec = BenchSpec(
        method="engine",
        model=f"synthetic-cnn{args.blocks}x{args.channels}@{args.image}",
        module="experiments.bench_engine",
        options={"batch": args.batch, "image": args.image, "channels": args.channels, "blocks": args.blocks},
        batch=args.batch,
        stages=args.stages,
        microbatches=tuple(args.microbatches),
        warmup=args.warmup,
        steps=args.steps,
        out=args.out,
        backward_pieces=args.pieces,
        rounds=args.rounds,
    )
    run_benchmark(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())

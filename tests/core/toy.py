"""A tiny teacher-student task for engine tests, and a plain single-process reference loop."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from core.batchnorm import commit_all
from core.momentum import TeacherRule
from core.runtime import prepare_models
from core.task import Task, gather, scatter, unit_slices

DIM = 6


def block(dim: int, bn: bool) -> nn.Module:
    layers = [nn.Linear(dim, dim)]
    if bn:
        layers.append(nn.BatchNorm1d(dim))
    layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class ToyTask(Task):
    """SSL-like (EMA teacher, two views, predictor) or KD-like (frozen deeper teacher, labels)."""

    def __init__(
        self, teacher: str = "ema", bn: bool = True, steps: int = 3, seed: int = 0, fail_at: int = -1
    ):
        self.kind = teacher
        self.bn = bn
        self.seed = seed
        self.fail_at = fail_at
        self.views = 2 if teacher == "ema" else 1
        self.predictor_blocks = 1 if teacher == "ema" else 0
        self.teacher_rule = (
            TeacherRule.ema(0.8, total_steps=steps) if teacher == "ema" else TeacherRule.frozen()
        )

    def build_student(self) -> list[nn.Module]:
        torch.manual_seed(self.seed)
        blocks = [block(DIM, self.bn) for _ in range(4)]
        if self.kind == "ema":
            blocks.append(nn.Linear(DIM, DIM))  # predictor
        return blocks

    def build_teacher(self, student):
        if self.kind == "ema":
            return [copy.deepcopy(b) for b in student[: len(student) - 1]]
        torch.manual_seed(self.seed + 1)
        teacher = [block(DIM, self.bn) for _ in range(6)]
        if self.bn:  # give the frozen teacher non-trivial running statistics
            for b in teacher:
                b[1].running_mean.uniform_(-0.5, 0.5)
                b[1].running_var.uniform_(0.5, 2.0)
        return teacher

    def split_inputs(self, batch, step):
        x, _ = batch
        if self.views == 1:
            return [x], [x]
        g = torch.Generator().manual_seed(1000 + step)
        noise = 0.1 * torch.randn(x.shape, generator=g)
        return [x + noise, x - noise], [x + noise, x - noise]

    def loss_context(self, batch, step):
        if step == self.fail_at:
            raise RuntimeError(f"injected failure at step {step}")
        return batch[1]

    def _terms(self, view, student, teacher, labels):
        if self.kind == "ema":
            p = F.normalize(student, dim=1)
            z = F.normalize(teacher[1 - view], dim=1)
            return (2 - 2 * (p * z).sum(dim=1)).sum()
        return ((student - teacher[0]) ** 2).sum() / DIM + F.cross_entropy(
            student, labels.to(student.device), reduction="sum"
        )

    def loss(self, student, teacher, context):
        batch = context.shape[0]
        total = sum(self._terms(v, student[v], teacher, context) for v in range(self.views)) / batch
        return {"loss": total}

    def microbatch_loss(self, view, microbatch, microbatches, student, teacher, context):
        batch = context.shape[0]
        index = unit_slices(batch, microbatches)[microbatch]
        mine = [t[index] for t in teacher]
        return self._terms(view, student, mine, context[index]) / batch


def make_batches(steps: int, batch: int = 24, seed: int = 7) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, DIM, generator=g), torch.randint(0, DIM, (batch,), generator=g))
        for _ in range(steps)
    ]


def sgd(named_params):
    return torch.optim.SGD([p for _, p in named_params], lr=0.01, momentum=0.9)


def reference(
    task: Task,
    batches,
    microbatches: int,
    pieces: int = 1,
    staleness: int = 0,
    max_grad_norm: float | None = None,
    optimizer_factory=None,
    scheduler_factory=None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Plain single-process training with the engine's micro-batch semantics: each view of each
    micro-batch (and each backward piece) is its own forward; the loss is over the whole
    mini-batch; the teacher used for batch t is ``staleness`` EMA updates behind."""
    student_blocks, teacher_blocks = prepare_models(task)
    student, teacher = nn.Sequential(*student_blocks), nn.Sequential(*teacher_blocks)
    optimizer = (optimizer_factory or sgd)(list(student.named_parameters()))
    scheduler = scheduler_factory(optimizer) if scheduler_factory else None
    history = [copy.deepcopy(teacher)]
    for step, batch in enumerate(batches):
        used = history[max(0, len(history) - 1 - staleness)]
        s_views, t_views = task.split_inputs(batch, step)
        with torch.no_grad():
            t_out = [gather([used(x) for x in scatter(v, microbatches)]) for v in t_views]
        s_out = [
            gather([gather([student(p) for p in scatter(x, pieces)]) for x in scatter(v, microbatches)])
            for v in s_views
        ]
        task.loss(s_out, t_out, task.loss_context(batch, step))["loss"].backward()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(student.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()
        commit_all(student)
        if task.teacher_rule.kind == "ema":
            m = task.teacher_rule.momentum(step)
            s_state = student.state_dict()
            with torch.no_grad():
                for name, t in teacher.state_dict().items():
                    if t.is_floating_point():
                        t.mul_(m).add_(s_state[name], alpha=1 - m)
                    else:
                        t.copy_(s_state[name])
            history.append(copy.deepcopy(teacher))
    return {"student": student.state_dict(), "teacher": teacher.state_dict()}

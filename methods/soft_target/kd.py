"""Soft-target knowledge distillation (Hinton et al., 2015) as an engine task: a fixed, trained
classifier teaches a smaller one through temperature-softened class probabilities."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.momentum import TeacherRule
from core.task import Task, unit_slices
from methods.soft_target.models import Arch, block_macs, channels, classifier_blocks, load_state


def soft_target_terms(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float
) -> dict[str, torch.Tensor]:
    """Per-sample terms of Hinton's soft-target loss.

    ``loss_i = alpha * T^2 * KL(softmax(t_i / T) || softmax(s_i / T)) + (1 - alpha) * CE(s_i, y_i)``.
    The T^2 factor keeps the soft term's gradient on the scale of the hard one as T changes.

    Args:
        student: student logits, ``B x classes``.
        teacher: teacher logits, ``B x classes`` (ignored when ``alpha`` is 0).
        labels: class indices, ``B``.
        alpha: weight of the soft term, in [0, 1]; 0 is plain cross-entropy.
        temperature: softening temperature T > 0.

    Returns:
        ``{"loss": ..., "kd": KL per sample, "ce": cross-entropy per sample}`` (vectors of B).
    """
    ce = F.cross_entropy(student, labels, reduction="none")
    if alpha == 0:
        return {"loss": ce, "kd": torch.zeros_like(ce), "ce": ce}
    log_s = F.log_softmax(student / temperature, dim=1)
    log_t = F.log_softmax(teacher / temperature, dim=1)
    kd = (log_t.exp() * (log_t - log_s)).sum(dim=1)
    loss = alpha * temperature**2 * kd + (1 - alpha) * ce
    return {"loss": loss, "kd": kd, "ce": ce}


def soft_target_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float
) -> dict[str, torch.Tensor]:
    """:func:`soft_target_terms` averaged over the mini-batch (scalars)."""
    return {k: v.mean() for k, v in soft_target_terms(student, teacher, labels, alpha, temperature).items()}


class SoftTargetTask(Task):
    """KD on the engine: one view, a frozen teacher (eval mode, never stale), a student trained
    from scratch; labels reach the loss through :meth:`loss_context` on the last stage.

    Args:
        student: the student's architecture.
        teacher: the teacher's architecture.
        teacher_state: the teacher's trained weights (a state dict); None keeps its random
            initialisation (throughput runs).
        alpha: weight of the soft term; at 0 the teacher is never used, and a chain of identity
            blocks (one per student block, free to run) stands in for it.
        temperature: softening temperature.
        seed: weight initialisation seed (student ``seed``, random teacher ``seed + 1``).
    """

    views = 1
    predictor_blocks = 0
    teacher_rule = TeacherRule.frozen()

    def __init__(
        self,
        student: Arch,
        teacher: Arch,
        teacher_state: dict[str, torch.Tensor] | None = None,
        alpha: float = 0.9,
        temperature: float = 4.0,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if (student.image, student.in_channels, student.classes) != (
            teacher.image,
            teacher.in_channels,
            teacher.classes,
        ):
            raise ValueError("student and teacher must take the same images and predict the same classes")
        self.student_arch, self.teacher_arch = student, teacher
        self.teacher_state = teacher_state
        self.alpha, self.temperature = alpha, temperature
        self.seed = seed

    @property
    def uses_teacher(self) -> bool:
        """False for cross-entropy alone (alpha = 0)."""
        return self.alpha > 0

    def block_costs(self) -> tuple[list[float], list[float]] | None:
        """Per-block multiply-accumulates (a student block costs about 3 forwards: forward and
        backward; the teacher only forwards), for balancing the teacher against the student's
        stages; None when the teacher is unused."""
        if not self.uses_teacher:
            return None
        return [3 * c for c in block_macs(self.student_arch)], list(block_macs(self.teacher_arch))

    def build_student(self) -> list[nn.Module]:
        torch.manual_seed(self.seed)
        return classifier_blocks(self.student_arch)

    def build_teacher(self, student):
        if not self.uses_teacher:
            return [nn.Identity() for _ in student]
        torch.manual_seed(self.seed + 1)
        blocks = classifier_blocks(self.teacher_arch)
        if self.teacher_state is not None:
            load_state(blocks, self.teacher_state)
        return blocks

    def channels(self, images: torch.Tensor) -> torch.Tensor:
        """Images with the channels the models take (gray repeated, or the first channel kept)."""
        return channels(images, self.student_arch.in_channels)

    def split_inputs(self, batch, step):
        # contiguous: with alpha = 0 the identity teacher sends its input on as an activation
        images = self.channels(batch[0]).contiguous()
        return [images], [images]

    def loss_context(self, batch, step):
        return batch[1]

    def _terms(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor):
        labels = labels.to(student.device)
        return soft_target_terms(student, teacher, labels, self.alpha, self.temperature)

    def loss(self, student, teacher, context):
        terms = self._terms(student[0], teacher[0], context)
        return {k: v.mean() for k, v in terms.items()}

    def microbatch_loss(self, view, microbatch, microbatches, student, teacher, context):
        index = unit_slices(len(context), microbatches)[microbatch]
        return self._terms(student, teacher[0][index], context[index])["loss"].sum() / len(context)

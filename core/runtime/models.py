"""The models a runner holds: student and teacher blocks prepared for the engine, the balances
that split them into stages, and one stage's partition."""

from __future__ import annotations

from torch import nn

from core.batchnorm import convert_deferred, set_accumulate
from core.config import PipelineConfig
from core.partition import check_balance, plan_partition, stage_modules, uniform_balance
from core.task import Task


def prepare_models(task: Task) -> tuple[list[nn.Module], list[nn.Module]]:
    """Build student and teacher blocks as the engine runs them: BatchNorm deferred in the
    student; an EMA teacher in training mode without statistics of its own, a frozen one in eval
    mode; no gradients for the teacher."""
    student = [convert_deferred(b) for b in task.build_student()]
    teacher = task.build_teacher(student)
    for block in teacher:
        block.requires_grad_(False)
        if task.teacher_rule.kind == "ema":
            convert_deferred(block)
            set_accumulate(block, False)
            block.train()
        else:
            block.eval()
    for block in student:
        block.train()
    return student, teacher


def resolve_balances(
    config: PipelineConfig, task: Task, n_student: int, n_teacher: int
) -> tuple[list[int], list[int]]:
    """Student and teacher balances of a run: explicit ones checked, missing ones planned.

    An EMA teacher always takes the student's boundaries (predictor blocks excluded). A frozen
    teacher without an explicit balance is split against the student's stages by the task's
    per-block cost estimates (:meth:`Task.block_costs`) when it has them and
    ``config.balance_by`` is ``cost``; otherwise like the student when the block counts match,
    else uniformly.

    Raises:
        ValueError: for balances that do not fit the blocks or stages.
    """
    stages = config.stages
    extra = task.predictor_blocks
    if task.teacher_rule.kind == "ema":
        if n_student - extra != n_teacher:
            raise ValueError(
                f"EMA teacher has {n_teacher} blocks but the student has {n_student - extra} besides "
                f"{extra} predictor blocks; they must mirror each other"
            )
        if config.balance is not None:
            student = list(config.balance)
            check_balance(student, n_student, stages, "student")
        else:
            teacher = uniform_balance(n_teacher, stages, "teacher")
            student = teacher[:-1] + [teacher[-1] + extra]
        teacher = student[:-1] + [student[-1] - extra]
        check_balance(teacher, n_teacher, stages, "teacher (tied to the student)")
        if config.teacher_balance is not None and list(config.teacher_balance) != teacher:
            raise ValueError(
                f"an EMA teacher must be split like the student: teacher_balance {list(config.teacher_balance)} "
                f"!= {teacher}; drop teacher_balance"
            )
        return student, teacher
    student = (
        list(config.balance) if config.balance is not None else uniform_balance(n_student, stages, "student")
    )
    check_balance(student, n_student, stages, "student")
    estimates = task.block_costs() if config.balance_by == "cost" and stages > 1 else None
    if config.teacher_balance is not None:
        teacher = list(config.teacher_balance)
    elif estimates is not None:
        student_costs, teacher_costs = estimates
        teacher = list(
            plan_partition(stages, student_costs, teacher_costs, "frozen", balance=student).teacher
        )
    elif config.balance is not None and n_teacher == n_student:
        teacher = list(config.balance)
    else:
        teacher = uniform_balance(n_teacher, stages, "teacher")
    check_balance(teacher, n_teacher, stages, "teacher")
    return student, teacher


def stage_partition(
    student: list[nn.Module], teacher: list[nn.Module], balances: tuple[list[int], list[int]], stage: int
) -> tuple[nn.Sequential, nn.Sequential]:
    """Stage ``stage``'s student and teacher blocks under ``balances`` (sharing parameters)."""
    student_balance, teacher_balance = balances
    return stage_modules(student, student_balance, stage), stage_modules(teacher, teacher_balance, stage)

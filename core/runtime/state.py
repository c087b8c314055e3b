"""What a runner saves and restores: checkpoint state (weights, optimizer, scheduler, teacher
versions, skipped steps, random states), and weights keyed by global block index, merged over
ranks."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


def rng_state() -> dict[str, Any]:
    """This process's random states: Python, NumPy, torch CPU (and CUDA)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_state(runner: Any) -> dict[str, Any]:
    """Everything a rank needs to continue bit for bit: its partitions (and, for a stale
    teacher, the version the next mini-batch reads), optimizer, scheduler, teacher version,
    skipped steps and random states. Tensors and plain containers only
    (``torch.load(weights_only=True)`` reads it).

    Args:
        runner: has ``student``, ``teacher``, ``optimizer``, ``scheduler``, ``end_step`` and
            ``versions`` (None when it keeps none).
    """
    versions = runner.versions.state() if runner.versions is not None else {}
    return {
        "student": runner.student.state_dict(),
        "teacher": runner.teacher.state_dict(),
        "previous_teacher": versions.get("previous_teacher"),
        "previous_teachers": versions.get("previous_teachers"),
        "optimizer": runner.optimizer.state_dict(),
        "scheduler": runner.scheduler.state_dict() if runner.scheduler is not None else None,
        "teacher_version": versions.get("teacher_version"),
        "skipped_steps": runner.end_step.skipped_steps,
        "rng": rng_state(),
    }


def load_checkpoint_state(runner: Any, state: dict[str, Any]) -> None:
    """Restore :func:`checkpoint_state` (same schedule, stages and balance)."""
    runner.student.load_state_dict(state["student"])
    runner.teacher.load_state_dict(state["teacher"])
    runner.optimizer.load_state_dict(state["optimizer"])
    if runner.scheduler is not None and state["scheduler"] is not None:
        runner.scheduler.load_state_dict(state["scheduler"])
    if runner.versions is not None:
        runner.versions.load(state)
    runner.end_step.skipped_steps = state["skipped_steps"]
    set_rng_state(state["rng"])


class RunnerState:
    """What every runner offers of its state, from its ``end_step`` and ``versions`` (None when
    it keeps no teacher versions): skipped steps, checkpoints, the steps a stale teacher's
    snapshot must follow."""

    @property
    def skipped_steps(self) -> int:
        return self.end_step.skipped_steps

    def keep_teacher_at(self, steps: Callable[[int], bool]) -> None:
        """Steps a checkpoint will follow (a stale teacher keeps the version resume needs)."""
        if self.versions is not None:
            self.versions.keep_at = steps

    def checkpoint_state(self) -> dict[str, Any]:
        return checkpoint_state(self)

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        load_checkpoint_state(self, state)


def global_state(module: nn.Module, blocks: Sequence[int]) -> dict[str, torch.Tensor]:
    """A stage module's state keyed by global block index (``"3.conv.weight"``), CPU copies.

    Args:
        module: an ``nn.Sequential`` of the blocks ``blocks`` (global indices, in order).
    """
    out = {}
    for name, value in module.state_dict().items():
        local, _, rest = name.partition(".")
        out[f"{blocks[int(local)]}.{rest}"] = value.detach().cpu().clone()
    return out


def gather_state(
    runtime_state: dict[str, dict[str, torch.Tensor]],
) -> dict[str, dict[str, torch.Tensor]] | None:
    """Merge every rank's ``stage_state()`` on rank 0.

    Returns:
        On rank 0, full ``{"student": state_dict, "teacher": state_dict}`` of ``nn.Sequential``
        models of all blocks; None on other ranks.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return runtime_state
    parts: list[Any] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(runtime_state, parts, dst=0)
    if dist.get_rank() != 0:
        return None
    return merge_states(parts)


def merge_states(parts: Sequence[dict[str, dict[str, torch.Tensor]]]) -> dict[str, dict[str, torch.Tensor]]:
    """Merge per-rank ``stage_state()`` dicts into whole-model state dicts."""
    merged: dict[str, dict[str, torch.Tensor]] = {"student": {}, "teacher": {}}
    for part in parts:
        for kind in merged:
            merged[kind].update(part[kind])
    return merged

"""What a method gives the rest of the project: a :class:`MethodSpec` (its config class,
presets, checks and run setup), and the :class:`Setup` of one run.

A method knows nothing of processes or schedules: ``setup`` builds the task, the data, the
optimiser and the evaluation from a :class:`core.config.Config`; the orchestration
(``training``) and the benchmark driver (``experiments.bench``) run it under any schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from core.config import Config
from core.task import Task


@dataclass
class Setup:
    """What a method builds for one run.

    Attributes:
        task: the task.
        batches: ``batches(start, steps)`` yields the data batches of those steps.
        optimizer: optimizer factory from named parameters.
        scheduler: learning-rate scheduler factory, or None.
        steps: total optimizer steps.
        steps_per_epoch: steps in one pass over the data.
        samples_per_step: samples per mini-batch.
        model: model name for rows.
        evaluate: merged ``{"student": state, "teacher": state}`` -> metrics (rank 0 only).
        metric: the metric a result row reports.
        synthetic_data: the inputs are synthetic (throughput runs only).
    """

    task: Task
    batches: Callable[[int, int], Iterable[Any]]
    optimizer: Callable[..., torch.optim.Optimizer]
    scheduler: Callable[[torch.optim.Optimizer], Any] | None
    steps: int
    steps_per_epoch: int
    samples_per_step: int
    model: str
    evaluate: Callable[[dict[str, dict[str, torch.Tensor]]], dict[str, float]] | None = None
    metric: str | None = None
    synthetic_data: bool = False


def _no_check(config: Config) -> None:
    """Nothing to check."""


@dataclass(frozen=True)
class MethodSpec:
    """A method as the orchestration and the benchmark see it.

    Attributes:
        name: registry name (``byol``, ...); also the result rows' ``method``.
        title: name in tables (``BYOL``).
        config_cls: its config dataclass (the ``method`` section of a :class:`Config`).
        presets: named :class:`Config` values (``methods/<name>/presets.py``).
        default_preset: preset used without ``--preset``.
        setup: builds one run.
        make_task: builds just the task (cheap), so block counts can be checked before any
            process starts.
        check: raises (``ConfigError``, ``DataNotFound``) when a config cannot run here (data
            or a teacher checkpoint missing); called before any process starts.
        bench_presets: the benchmark's preset per device (``cpu``, ``cuda``).
        bench_command: the make target of its CPU benchmark (named in rows, re-run by reports).
        accuracy_command: the make target of its accuracy experiment (named in rows).
    """

    name: str
    title: str
    config_cls: type
    presets: Mapping[str, Config]
    default_preset: str
    setup: Callable[[Config], Setup]
    make_task: Callable[[Config], Task]
    check: Callable[[Config], None] = _no_check
    bench_presets: Mapping[str, str] = field(default_factory=dict)
    bench_command: str = ""
    accuracy_command: str = ""

    def preset(self, name: str) -> Config:
        """A preset by name.

        Raises:
            ValueError: for an unknown name, listing the known ones.
        """
        try:
            return self.presets[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(self.presets)}") from None

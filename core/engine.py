"""One entry for every way of running a task: the pipeline runtime, ddp, or the torch peer."""

from __future__ import annotations

import torch

from core.config import PipelineConfig
from core.ddp import DDPRunner
from core.runtime import OptimizerFactory, PipelineRuntime, SchedulerFactory
from core.task import Task
from core.torchpipe import TorchPipelineRunner

# Runners beside the pipeline runtime, by --schedule name (DESIGN.md: baselines are named
# schedules or runners, never flags inside the runtime).
RUNNER_CLASSES = {"ddp": DDPRunner, "torch-gpipe": TorchPipelineRunner, "torch-1f1b": TorchPipelineRunner}


def make_runner(
    task: Task,
    config: PipelineConfig,
    device: torch.device,
    optimizer_factory: OptimizerFactory,
    scheduler_factory: SchedulerFactory | None = None,
) -> PipelineRuntime | DDPRunner | TorchPipelineRunner:
    """The runner for ``config.schedule``: a pipeline schedule runs on :class:`PipelineRuntime`.

    Raises:
        ValueError: if the task, config and process count do not fit together.
    """
    cls = RUNNER_CLASSES.get(config.schedule, PipelineRuntime)
    return cls(task, config, device, optimizer_factory, scheduler_factory)

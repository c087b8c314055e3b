"""The baselines that are runners rather than action lists: data parallelism and PyTorch's own
pipelining (the outside peer). They are named schedules all the same, so ``--schedule`` picks
them and every table lists them."""

from __future__ import annotations

from core.schedules.spec import ScheduleSpec, register

register(
    ScheduleSpec(
        "ddp",
        "data parallel replicas of the whole pair (DistributedDataParallel)",
        runner="ddp",
        splits_backward=False,
        microbatches=1,
        min_stages=2,
        order=5,
        colour="#59a14f",
    )
)
register(
    ScheduleSpec(
        "torch-gpipe",
        "torch.distributed.pipelining ScheduleGPipe (teacher pass, then student)",
        runner="torch",
        splits_backward=False,
        per_unit_loss=True,
        min_stages=2,
        student_schedule="gpipe",
        baseline=True,
        order=6,
        colour="#76b7b2",
    )
)
register(
    ScheduleSpec(
        "torch-1f1b",
        "torch.distributed.pipelining Schedule1F1B (teacher pass, then student)",
        runner="torch",
        splits_backward=False,
        per_unit_loss=True,
        min_stages=2,
        min_units_per_stage=1,
        student_schedule="1f1b",
        order=7,
        colour="#9c755f",
    )
)

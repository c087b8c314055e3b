"""Frozen dataclasses for the pipeline part of a run, validated before any process starts."""

from __future__ import annotations

from dataclasses import dataclass

from core.schedule import SCHEDULES

# Runners that are not schedules of the pipeline runtime (DESIGN.md): data parallelism and
# PyTorch's own pipelining as the outside peer.
RUNNERS = ("ddp", "torch-gpipe", "torch-1f1b")


@dataclass(frozen=True)
class PipelineConfig:
    """How a run is spread over processes.

    Attributes:
        schedule: a schedule of ``core.schedule.SCHEDULES`` or a runner of :data:`RUNNERS`.
        stages: pipeline stages, one process each (for ``ddp``: the number of replicas).
        microbatches: micro-batches per mini-batch (each of a task's views is its own unit).
        backward_pieces: pieces each student backward is split into; None takes the schedule's
            default (2 for tspipe, 1 otherwise). Each piece's forward is its own graph, so with
            BatchNorm it is also its own normalisation batch: compare schedules at equal pieces.
        balance: student blocks per stage; None splits the blocks uniformly.
        teacher_balance: teacher blocks per stage for a frozen teacher; None: like ``balance``
            when the block counts match, else uniform.
        amp_bf16: run forwards under bf16 autocast.
        max_grad_norm: clip the global gradient norm (over all stages) to this; None: no clipping.
        record_timeline: record start and end of every action (costs a device sync per action
            on CUDA).
        timeout_s: longest wait for one message before the run is declared stuck.
        nan_guard: on a non-finite loss or gradient, ``stop`` the run at that step (before the
            update), ``skip`` the step on every stage (counted), or ``off``.
    """

    schedule: str = "gpipe"
    stages: int = 1
    microbatches: int = 1
    backward_pieces: int | None = None
    balance: tuple[int, ...] | None = None
    teacher_balance: tuple[int, ...] | None = None
    amp_bf16: bool = False
    max_grad_norm: float | None = None
    record_timeline: bool = False
    timeout_s: float = 300.0
    nan_guard: str = "stop"

    def __post_init__(self) -> None:
        known = (*SCHEDULES, *RUNNERS)
        if self.schedule not in known:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(known)}")
        if not isinstance(self.stages, int) or self.stages < 1:
            raise ValueError(f"stages must be an integer >= 1, got {self.stages!r}")
        if not isinstance(self.microbatches, int) or self.microbatches < 1:
            raise ValueError(f"microbatches must be an integer >= 1, got {self.microbatches!r}")
        if self.schedule == "sequential" and self.stages != 1:
            raise ValueError(f"sequential runs on one process; got stages={self.stages}")
        if self.schedule == "mp" and self.microbatches != 1:
            raise ValueError(f"mp runs one micro-batch; got microbatches={self.microbatches}")
        if self.backward_pieces is not None and self.backward_pieces < 1:
            raise ValueError(f"backward_pieces must be >= 1, got {self.backward_pieces}")
        if self.schedule in RUNNERS and self.backward_pieces not in (None, 1):
            raise ValueError(f"{self.schedule} does not split backwards; drop backward_pieces")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.nan_guard not in ("stop", "skip", "off"):
            raise ValueError(f"nan_guard must be stop, skip or off, got {self.nan_guard!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        for name in ("balance", "teacher_balance"):
            value = getattr(self, name)
            if value is not None and len(value) != self.stages:
                raise ValueError(
                    f"{name} {list(value)} has {len(value)} entries; need one per stage ({self.stages})"
                )

    @property
    def pieces(self) -> int:
        """Backward pieces actually used."""
        if self.backward_pieces is not None:
            return self.backward_pieces
        return SCHEDULES[self.schedule].default_pieces if self.schedule in SCHEDULES else 1

    @property
    def is_pipeline(self) -> bool:
        """True when the pipeline runtime runs this schedule (not ddp or the torch peer)."""
        return self.schedule in SCHEDULES

"""One configuration the planner simulated (:class:`Candidate`), from a simulation or from ddp's
model, and each schedule's best of a ranked list."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from core.calibration import Calibration
from core.link import Link
from core.paper_scale import (
    SEARCH_BATCHES,
    STUDENT_STATE_BYTES,
    TEACHER_STATE_BYTES,
    calibration_memory,
    simulate_ddp,
    teacher_early,
)
from core.schedules import schedules

GIB = 2**30


@dataclass(frozen=True)
class Candidate:
    """One configuration the planner simulated.

    Attributes:
        schedule: registry name.
        gpus: GPUs (pipeline stages x dp, or ddp replicas).
        microbatches: micro-batches per mini-batch (1 for ddp).
        backward_pieces: pieces of each backward (None for ddp).
        partition: ``cost`` (auto-balanced), ``uniform`` (by block count) or ``searched``
            (:mod:`core.partition_search`); ``replicas`` for ddp.
        balance: student blocks per stage (empty for ddp).
        teacher_early: the tspipe family's per-stage early teacher forwards, else None.
        samples_per_s: predicted throughput.
        step_ms: predicted step.
        efficiency: samples/s over the bubble-free bound.
        bubble_fraction: idle share of the stages (None for ddp).
        stage_mem_gib: peak memory of each stage (each replica, for ddp), GiB.
        lookahead: the teacher lookahead L it was simulated with (None: the schedule's own).
        window: mini-batches simulated (the search's short window, or the full one; None for
            ddp's analytic step).
    """

    schedule: str
    gpus: int
    microbatches: int
    backward_pieces: int | None
    partition: str
    balance: tuple[int, ...]
    teacher_early: tuple[int, ...] | None
    samples_per_s: float
    step_ms: float
    efficiency: float
    bubble_fraction: float | None
    stage_mem_gib: tuple[float, ...]
    lookahead: int | None = None
    window: int | None = SEARCH_BATCHES
    dp: int = 1

    @property
    def stages(self) -> int:
        """Pipeline stages (GPUs per replica)."""
        return self.gpus // self.dp

    @property
    def peak_gib(self) -> float:
        """The fullest stage's peak memory."""
        return max(self.stage_mem_gib)

    def to_dict(self) -> dict:
        """JSON-ready fields, with ``peak_gib``."""
        out = asdict(self)
        out["peak_gib"] = self.peak_gib
        return out


def candidate(
    cal: Calibration, found: tuple, partition: str, lookahead: int | None = None, dp: int = 1
) -> Candidate:
    """The candidate of one simulation (``found``: :func:`core.paper_scale.simulate_calibration`'s
    result, built schedule and partition), labelled with how its ``partition`` was chosen."""
    result, built, part = found
    memory = tuple(p.bytes / GIB for p in calibration_memory(cal, built, part, dp))
    early = teacher_early(built)
    return Candidate(
        schedule=built.name,
        gpus=built.stages * dp,
        microbatches=built.microbatches,
        backward_pieces=built.backward_pieces,
        partition=partition,
        balance=tuple(part.student),
        teacher_early=tuple(early) if early is not None else None,
        samples_per_s=result.samples_per_s,
        step_ms=result.step_ms,
        efficiency=result.efficiency,
        bubble_fraction=result.bubble_fraction,
        stage_mem_gib=memory,
        lookahead=lookahead,
        window=built.batches - max(0, built.fill_ahead - 1),  # as asked (window_batches adds)
        dp=dp,
    )


def ddp_candidate(cal: Calibration, gpus: int, link: Link) -> Candidate:
    """ddp on ``gpus`` replicas: its modelled step, and each replica's memory (the whole student
    and teacher state, one micro-batch of ``batch / gpus`` samples' block outputs, the teacher
    outputs it holds for the loss; as :func:`core.paper_scale.calibration_memory`)."""
    ddp = simulate_ddp(cal, gpus, link)
    samples = cal.batch / gpus
    dtype_bytes = 2 if cal.amp_bf16 else 4
    act = cal.views * samples * dtype_bytes * (sum(cal.student_out) + cal.teacher_out[-1])
    static = STUDENT_STATE_BYTES * cal.student_params + TEACHER_STATE_BYTES * cal.teacher_params
    return Candidate(
        schedule=next(s.name for s in schedules("ddp")),
        gpus=gpus,
        microbatches=1,
        backward_pieces=None,
        partition="replicas",
        balance=(),
        teacher_early=None,
        samples_per_s=ddp["samples_per_s"],
        step_ms=ddp["step_ms"],
        efficiency=ddp["efficiency"],
        bubble_fraction=None,
        stage_mem_gib=tuple((act + static) / GIB for _ in range(gpus)),
        window=None,
    )


def per_schedule(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Each schedule's best of a ranked list (per schedule and dp), in rank order."""
    seen: dict[tuple[str, int], Candidate] = {}
    for c in candidates:
        seen.setdefault((c.schedule, c.dp), c)
    return list(seen.values())

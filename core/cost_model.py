"""The cost model the simulator charges: per-stage costs of one unit, in milliseconds, and the
two ways to make one (:func:`stage_cost_model` from per-block costs and a partition, the one way
calibrations and the bench's profiles become per-stage costs; :func:`unit_costs`, the unit costs
of the pinned schedule tests and the docstring timelines)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from core.action import Action, Op
from core.link import Link
from core.partition import Partition, stage_costs, stage_slices


@dataclass(frozen=True)
class CostModel:
    """Per-stage costs of one unit (one view of one micro-batch), in milliseconds.

    Attributes:
        teacher_fwd: teacher forward per unit, one entry per stage.
        student_fwd: student forward per unit.
        student_bwd: student backward per unit (a split backward's piece costs a share of it).
        teacher_bytes: bytes of one teacher activation message leaving each stage.
        student_bytes: bytes of one student activation (and gradient) message at each boundary.
        opt_ms: optimizer step plus teacher update per stage, once per mini-batch.
        loss_ms: the loss of the whole mini-batch on the last stage.
        link: the link between neighbouring stages.
        weight_share: the share of ``student_bwd`` a split backward's weight half (``SW``) costs,
            the rest going to its input half (``SB``): one for every stage, or one per stage; on
            stage 0, which sends no input gradient, ``SB`` is the whole backward and ``SW`` is
            empty (as in the runtime). 0.5 when not measured.
        input_ms: making a mini-batch's inputs (data, augmentations), charged to the first
            compute action of each mini-batch on stage 0, where the runtime does it.
        split_bwd: per stage, what a split backward (``SB`` + ``SW``) costs in all, more than
            the whole ``student_bwd`` (two autograd passes); None: the same.
        waiting: per stage, the factors on ``SB`` and ``SW`` run while another unit's weight
            half waits on the stage (``core.deferral``); None: no change.
    """

    teacher_fwd: tuple[float, ...]
    student_fwd: tuple[float, ...]
    student_bwd: tuple[float, ...]
    teacher_bytes: tuple[float, ...]
    student_bytes: tuple[float, ...]
    opt_ms: tuple[float, ...]
    loss_ms: float = 0.0
    link: Link = field(default_factory=Link)
    weight_share: float | tuple[float, ...] = 0.5
    input_ms: float = 0.0
    split_bwd: tuple[float, ...] | None = None
    waiting: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.teacher_fwd)
        shares = self.weight_share if isinstance(self.weight_share, tuple) else (self.weight_share,)
        if not all(0.0 <= x <= 1.0 for x in shares) or len(shares) not in (1, n):
            raise ValueError(
                f"cost model: weight_share must lie in [0, 1], one or one per stage, got {shares}"
            )
        per_stage = ("student_fwd", "student_bwd", "teacher_bytes", "student_bytes", "opt_ms")
        for name in (*per_stage, "split_bwd", "waiting"):
            if getattr(self, name) is not None and len(getattr(self, name)) != n:
                raise ValueError(f"cost model: {name} has {len(getattr(self, name))} stages, expected {n}")

    @property
    def stages(self) -> int:
        return len(self.teacher_fwd)

    def stage_work(self, units: int) -> list[float]:
        """Compute milliseconds each stage spends per mini-batch of ``units`` units."""
        work = [
            units * (t + f + b) + o
            for t, f, b, o in zip(self.teacher_fwd, self.student_fwd, self.student_bwd, self.opt_ms)
        ]
        work[-1] += self.loss_ms
        work[0] += self.input_ms
        return work

    def share(self, stage: int) -> float:
        """The weight half's share of stage ``stage``'s backward."""
        return self.weight_share[stage] if isinstance(self.weight_share, tuple) else self.weight_share

    def duration(
        self, action: Action, units: int, pieces: int, split: bool = False, waits: bool = False
    ) -> float:
        """Milliseconds ``action`` occupies its stage (``split``: the schedule splits backwards;
        ``waits``: another unit's weight half waits on the stage while it runs)."""
        s = action.stage
        slower = self.waiting[s] if waits and self.waiting else (1.0, 1.0)
        if action.op == Op.TF:
            return self.teacher_fwd[s]
        if action.op == Op.SF:
            return self.student_fwd[s]
        whole = self.split_bwd[s] if split and s > 0 and self.split_bwd else self.student_bwd[s]
        if action.op == Op.SB:
            share = self.share(s) if split and s > 0 else 0.0
            return whole * (1.0 - share) / pieces * slower[0]
        if action.op == Op.SW:
            return whole * self.share(s) / pieces * slower[1] if s > 0 else 0.0
        if action.op == Op.LOSS:
            return self.loss_ms if action.microbatch is None else self.loss_ms / units
        if action.op == Op.OPT:
            return self.opt_ms[s]
        return self.link.handling_ms(self.message_bytes(action, pieces))  # a send or a receive

    def message_bytes(self, action: Action, pieces: int) -> float:
        """Bytes of the message a send or a receive moves."""
        op, s = action.op, action.stage
        if op in (Op.SEND_TF, Op.RECV_TF):
            return self.teacher_bytes[s if op == Op.SEND_TF else s - 1]
        if op in (Op.SEND_SF, Op.RECV_SF):
            return self.student_bytes[s if op == Op.SEND_SF else s - 1]
        # a gradient message crosses the boundary below the sender (above the receiver): the
        # size of that boundary's activation, per piece
        boundary = s - 1 if op == Op.SEND_SB else s
        return self.student_bytes[boundary] / (pieces if action.part is not None else 1)


def unit_costs(stages: int, pieces_loss_opt: float = 0.5) -> CostModel:
    """Teacher forward = student forward = 1, backward = 2, loss and step 0.5, instant links:
    the cost model of the docstring timelines and the pinned simulator tests."""
    ones = tuple(1.0 for _ in range(stages))
    return CostModel(
        teacher_fwd=ones,
        student_fwd=ones,
        student_bwd=tuple(2.0 for _ in range(stages)),
        teacher_bytes=tuple(0.0 for _ in range(stages)),
        student_bytes=tuple(0.0 for _ in range(stages)),
        opt_ms=tuple(pieces_loss_opt for _ in range(stages)),
        loss_ms=pieces_loss_opt,
        link=Link(gbps=1.0, latency_us=0.0),
    )


def stage_cost_model(
    teacher_fwd: Sequence[float],
    student_fwd: Sequence[float],
    student_bwd: Sequence[float],
    teacher_bytes: Sequence[float],
    student_bytes: Sequence[float],
    student_opt: Sequence[float],
    teacher_opt: Sequence[float],
    partition: Partition,
    link: Link,
    loss_ms: float = 0.0,
    student_bwd_input: Sequence[float] | None = None,
    student_bwd_split: Sequence[float] | None = None,
    input_ms: float = 0.0,
) -> CostModel:
    """Per-stage costs from per-block ones (the one way both calibrations and the bench's
    profiles become a :class:`CostModel`).

    Args:
        teacher_fwd, student_fwd, student_bwd: milliseconds per block for one unit.
        teacher_bytes, student_bytes: bytes of each block's output for one unit.
        student_opt, teacher_opt: per-mini-batch update time per student / teacher block
            (optimizer step, EMA), summed into each stage's ``OPT``.
        partition: the stage boundaries.
        link: the link between neighbouring stages.
        loss_ms: the loss of the whole mini-batch on the last stage.
        student_bwd_input: the input-gradient half of each block's backward, which sets each
            stage's ``weight_share``; None: half of each backward.
        student_bwd_split: each block's split backward in all (input half, then weight half);
            None: the whole backward.
        input_ms: making a mini-batch's inputs, on stage 0.
    """
    share: float | tuple[float, ...] = 0.5
    split = stage_costs(student_bwd_split, partition.student) if student_bwd_split else None
    if student_bwd_input:
        whole = split or stage_costs(student_bwd, partition.student)
        inputs = stage_costs(student_bwd_input, partition.student)
        share = tuple(min(max(1.0 - i / w, 0.0), 1.0) if w > 0 else 0.5 for i, w in zip(inputs, whole))
    t_last = [r[-1] for r in stage_slices(partition.teacher)]
    s_last = [r[-1] for r in stage_slices(partition.student)]
    opt = [
        a + b
        for a, b in zip(
            stage_costs(student_opt, partition.student), stage_costs(teacher_opt, partition.teacher)
        )
    ]
    return CostModel(
        teacher_fwd=tuple(stage_costs(teacher_fwd, partition.teacher)),
        student_fwd=tuple(stage_costs(student_fwd, partition.student)),
        student_bwd=tuple(stage_costs(student_bwd, partition.student)),
        teacher_bytes=tuple(float(teacher_bytes[i]) for i in t_last),
        student_bytes=tuple(float(student_bytes[i]) for i in s_last),
        opt_ms=tuple(opt),
        loss_ms=loss_ms,
        link=link,
        weight_share=share,
        input_ms=input_ms,
        split_bwd=tuple(split) if split else None,
    )

"""Per-kind costs from a measured one-process step: what blocks timed one by one miss.

A profile (:mod:`core.profile`) times each block alone, on a prepared input. Inside a training
step each kind of work runs at its own speed (a teacher forward under ``no_grad`` after a
backward, the loss over the whole batch, the optimizer step and EMA update with their per-step
overhead), every action pays the runtime's bookkeeping, and stage 0 first makes the mini-batch's
inputs (data and augmentations). A one-process ``sequential`` run's timeline shows all of it.
:func:`fit_step` reads that timeline into a :class:`StepFit`: per op kind, how long each action
holds the process (start to the next action's start, so the gaps go with the work) over its
profiled cost; the loss and the update per mini-batch; and the input cost (what the first action
of a mini-batch takes beyond its kind's usual). :func:`apply_fit` puts them on profiled costs,
so the simulator's one-process step reproduces the measured one by construction and every
pipelined prediction inherits per-kind, not averaged, corrections.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace

from core.metrics import TimelineRecord
from core.profile import BlockCosts

SCALED = {
    "TF": ("teacher_fwd",),
    "SF": ("student_fwd",),
    "SB": ("student_bwd", "student_bwd_input", "student_bwd_split"),
}


@dataclass(frozen=True)
class StepFit:
    """What a one-process step measured, against the profile it ran at.

    Attributes:
        scale: per kind (``TF``, ``SF``, ``SB``): median time an action holds the process over
            its profiled cost (all blocks).
        loss_ms: the loss per mini-batch.
        opt_ms: the optimizer step and teacher update per mini-batch, with the step's own
            overhead (up to the next mini-batch's first action).
        input_ms: making a mini-batch's inputs.
        step_ms: the median measured step the fit comes from (for the check).
    """

    scale: dict[str, float]
    loss_ms: float
    opt_ms: float
    input_ms: float
    step_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def processes(records: Sequence[TimelineRecord]) -> list[list[TimelineRecord]]:
    """A one-process run's records as each process wrote them: a busy run (the same run on
    every process at once) concatenates every process's, all on stage 0, so a new process
    starts where an action repeats."""
    out: list[list[TimelineRecord]] = [[]]
    seen: set[str] = set()
    for r in records:
        if r.action in seen:
            out.append([])
            seen = set()
        seen.add(r.action)
        out[-1].append(r)
    return [x for x in out if x]


def fit_step(
    rounds: Iterable[Sequence[TimelineRecord]],
    costs: BlockCosts,
    first: int,
    last: int,
    input_ms: float | None = None,
) -> StepFit:
    """Fit a one-process run's timelines (one per round and process, see :func:`processes`)
    against the costs profiled at its unit size, over mini-batches ``first`` to ``last`` (its
    steady ones).

    The input cost is what a mini-batch's first action takes beyond the median of its kind's
    other actions; where its kind has no other action (one unit per mini-batch: one view, one
    micro-batch), it cannot be told apart and must be given (``input_ms``, from a run with
    more units: it does not depend on the unit size).

    Raises:
        ValueError: when no steady mini-batch has the kinds the fit needs (``TF``, ``SF``, ``SB``,
            ``OPT``), a profiled kind costs nothing, or the input cost is needed and not given.
    """
    held: dict[str, list[float]] = defaultdict(list)
    firsts: list[tuple[str, float]] = []
    per_batch: dict[str, list[float]] = defaultdict(list)
    steps: list[float] = []
    present: set[str] = set()
    for records in rounds:
        ordered = sorted(records, key=lambda r: r.start_ms)
        by_batch: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        seen: set[int] = set()
        for r, nxt in zip(ordered, ordered[1:]):
            if r.batch is None or not first <= r.batch <= last:
                continue
            took = nxt.start_ms - r.start_ms
            present.add(r.op)
            by_batch[r.batch][r.op] += took
            if r.batch not in seen:
                seen.add(r.batch)
                firsts.append((r.op, took))
            else:
                held[r.op].append(took)
        for kinds in by_batch.values():
            steps.append(sum(kinds.values()))
            for op in ("LOSS", "OPT"):
                per_batch[op].append(kinds.get(op, 0.0))
    missing = [op for op in (*SCALED, "OPT") if op not in present]
    if missing or not steps:
        raise ValueError(f"step fit: no steady mini-batch {first}..{last} with {missing or 'actions'}")
    usual = {op: statistics.median(v) for op, v in held.items() if v}
    if input_ms is None:
        extra = [took - usual[op] for op, took in firsts if op in usual]
        if not extra:
            raise ValueError(
                "step fit: every first action is its kind's only one, so the input cost cannot "
                "be told apart; give input_ms (from a run with more units per mini-batch)"
            )
        input_ms = max(statistics.median(extra), 0.0)
    for op, took in firsts:
        held[op].append(max(took - input_ms, 0.0))
    scale = {}
    for op, fields in SCALED.items():
        profiled = sum(getattr(costs, fields[0]))
        if profiled <= 0:
            raise ValueError(f"step fit: the profile's {fields[0]} costs nothing")
        scale[op] = statistics.median(held[op]) / profiled
    return StepFit(
        scale=scale,
        loss_ms=statistics.median(per_batch["LOSS"]),
        opt_ms=statistics.median(per_batch["OPT"]),
        input_ms=input_ms,
        step_ms=statistics.median(steps),
    )


def apply_fit(costs: BlockCosts, fit: StepFit) -> BlockCosts:
    """``costs`` with the step's per-kind scales, its loss, update and input costs (the update
    spread over blocks as the profile spread it)."""
    scaled = {
        name: [x * fit.scale[op] for x in getattr(costs, name)]
        for op, names in SCALED.items()
        for name in names
    }
    total = sum(costs.opt_ms)
    n = len(costs.opt_ms)
    opt = [fit.opt_ms * (x / total if total > 0 else 1.0 / n) for x in costs.opt_ms]
    return replace(costs, **scaled, loss_ms=fit.loss_ms, opt_ms=opt, input_ms=fit.input_ms)
